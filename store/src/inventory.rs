//! Devices (terminals) and desks (the office PCs people connect to).

use std::collections::{BTreeMap, BTreeSet};

use crate::audit::Audit;
use crate::db::Store;
use crate::error::{on_write, Error, Result};
use crate::types::{
    int, validate_id, validate_text, DeskService, DeviceClass, DeviceStatus, Segment,
};

/// A device to register or update (from its certificate and the loan record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Device id (the certificate's device name).
    pub id: String,
    /// Terminal class, from the certificate.
    pub class: DeviceClass,
    /// The user it is loaned to.
    pub loaned_to: Option<String>,
    /// Serial number of its current certificate (hex).
    pub cert_serial: Option<String>,
}

/// A stored device.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Device {
    /// Device id.
    pub id: String,
    /// Terminal class.
    #[sqlx(try_from = "String")]
    pub class: DeviceClass,
    /// Whether it may be used.
    #[sqlx(try_from = "String")]
    pub status: DeviceStatus,
    /// The user it is loaned to.
    pub loaned_to: Option<String>,
    /// Serial number of its current certificate.
    pub cert_serial: Option<String>,
    /// When first registered.
    pub created: i64,
}

/// A desk: an office PC reachable through an agent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Desk {
    /// Desk id (e.g. `DESK-1234`).
    pub id: String,
    /// The department it belongs to.
    pub department: String,
    /// Confidentiality level 1..=3 (機密性レベル).
    pub level: u8,
    /// Network segment.
    pub segment: Segment,
    /// What it serves: an RDP server (whose agent must enforce session
    /// controls) or another service registered as non-RDP.
    pub service: DeskService,
    /// The users who may connect to it.
    pub owners: BTreeSet<String>,
}

#[derive(sqlx::FromRow)]
struct DeskRow {
    id: String,
    department: String,
    level: i64,
    segment: String,
    service: String,
}

impl DeskRow {
    fn into_desk(self, owners: BTreeSet<String>) -> Result<Desk> {
        Ok(Desk {
            id: self.id,
            department: self.department,
            level: int("desk level", self.level)?,
            segment: self
                .segment
                .parse()
                .map_err(|e: Error| Error::corrupt("desk segment", e.to_string()))?,
            service: self
                .service
                .parse()
                .map_err(|e: Error| Error::corrupt("desk service", e.to_string()))?,
            owners,
        })
    }
}

fn validate_desk(d: &Desk) -> Result<()> {
    validate_id("desk id", &d.id)?;
    validate_text("department", &d.department, 128, false)?;
    if !(1..=3).contains(&d.level) {
        return Err(Error::invalid("desk level", "must be 1, 2 or 3"));
    }
    for o in &d.owners {
        validate_id("desk owner", o)?;
    }
    Ok(())
}

impl Store {
    /// Registers a device (status `active`) or updates its class, loan and
    /// certificate serial. The status is never changed here: only
    /// [`Store::set_device_status`] blocks or unblocks.
    pub async fn upsert_device(&self, d: &DeviceSpec, audit: Audit) -> Result<Device> {
        validate_id("device id", &d.id)?;
        if let Some(u) = &d.loaned_to {
            validate_id("loaned_to", u)?;
        }
        if let Some(s) = &d.cert_serial {
            validate_text("cert serial", s, 128, false)?;
        }
        const SQL: &str = "INSERT INTO devices (id, class, status, loaned_to, cert_serial, created) \
             VALUES ($1, $2, 'active', $3, $4, $5) ON CONFLICT (id) DO UPDATE SET \
             class = excluded.class, loaned_to = excluded.loaned_to, cert_serial = excluded.cert_serial \
             RETURNING id, class, status, loaned_to, cert_serial, created";
        let (device, _) = write_tx!(self, audit, |tx| {
            let device: Device = sqlx::query_as(SQL)
                .bind(&d.id)
                .bind(d.class.as_str())
                .bind(&d.loaned_to)
                .bind(&d.cert_serial)
                .bind(audit.at)
                .fetch_one(&mut *tx)
                .await
                .map_err(on_write("device"))?;
            device
        });
        Ok(device)
    }

    /// The device with `id`.
    pub async fn get_device(&self, id: &str) -> Result<Option<Device>> {
        const SQL: &str =
            "SELECT id, class, status, loaned_to, cert_serial, created FROM devices WHERE id = $1";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(id)
            .fetch_optional(p)
            .await?))
    }

    /// Every device, by id.
    pub async fn list_devices(&self) -> Result<Vec<Device>> {
        const SQL: &str =
            "SELECT id, class, status, loaned_to, cert_serial, created FROM devices ORDER BY id";
        Ok(read!(self, |p| sqlx::query_as(SQL).fetch_all(p).await?))
    }

    /// The devices loaned to a user, by id.
    pub async fn devices_loaned_to(&self, user_id: &str) -> Result<Vec<Device>> {
        const SQL: &str = "SELECT id, class, status, loaned_to, cert_serial, created FROM devices \
             WHERE loaned_to = $1 ORDER BY id";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(user_id)
            .fetch_all(p)
            .await?))
    }

    /// Blocks, unblocks, or marks a device lost or revoked. (Revoke its
    /// tokens and end its sessions separately.)
    pub async fn set_device_status(
        &self,
        id: &str,
        status: DeviceStatus,
        audit: Audit,
    ) -> Result<()> {
        const SQL: &str = "UPDATE devices SET status = $2 WHERE id = $1";
        write_tx!(self, audit, |tx| {
            let n = sqlx::query(SQL)
                .bind(id)
                .bind(status.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(Error::NotFound { what: "device" });
            }
        });
        Ok(())
    }

    /// Adds a desk with its owners.
    pub async fn add_desk(&self, desk: &Desk, audit: Audit) -> Result<()> {
        validate_desk(desk)?;
        const SQL: &str = "INSERT INTO desks (id, department, level, segment, service, created) \
             VALUES ($1, $2, $3, $4, $5, $6)";
        const OWNER: &str = "INSERT INTO desk_owners (desk_id, user_id) VALUES ($1, $2)";
        write_tx!(self, audit, |tx| {
            sqlx::query(SQL)
                .bind(&desk.id)
                .bind(&desk.department)
                .bind(i64::from(desk.level))
                .bind(desk.segment.as_str())
                .bind(desk.service.as_str())
                .bind(audit.at)
                .execute(&mut *tx)
                .await
                .map_err(on_write("desk"))?;
            for o in &desk.owners {
                sqlx::query(OWNER)
                    .bind(&desk.id)
                    .bind(o)
                    .execute(&mut *tx)
                    .await
                    .map_err(on_write("desk owner"))?;
            }
        });
        Ok(())
    }

    /// Replaces an existing desk's department, level, segment, service and owners.
    pub async fn set_desk(&self, desk: &Desk, audit: Audit) -> Result<()> {
        validate_desk(desk)?;
        const SQL: &str = "UPDATE desks SET department = $2, level = $3, segment = $4, \
             service = $5 WHERE id = $1";
        const CLEAR: &str = "DELETE FROM desk_owners WHERE desk_id = $1";
        const OWNER: &str = "INSERT INTO desk_owners (desk_id, user_id) VALUES ($1, $2)";
        write_tx!(self, audit, |tx| {
            let n = sqlx::query(SQL)
                .bind(&desk.id)
                .bind(&desk.department)
                .bind(i64::from(desk.level))
                .bind(desk.segment.as_str())
                .bind(desk.service.as_str())
                .execute(&mut *tx)
                .await
                .map_err(on_write("desk"))?
                .rows_affected();
            if n == 0 {
                return Err(Error::NotFound { what: "desk" });
            }
            sqlx::query(CLEAR).bind(&desk.id).execute(&mut *tx).await?;
            for o in &desk.owners {
                sqlx::query(OWNER)
                    .bind(&desk.id)
                    .bind(o)
                    .execute(&mut *tx)
                    .await
                    .map_err(on_write("desk owner"))?;
            }
        });
        Ok(())
    }

    /// The desk with `id`.
    pub async fn get_desk(&self, id: &str) -> Result<Option<Desk>> {
        const SQL: &str = "SELECT id, department, level, segment, service FROM desks WHERE id = $1";
        const OWNERS: &str = "SELECT user_id FROM desk_owners WHERE desk_id = $1";
        let row: Option<DeskRow> = read!(self, |p| sqlx::query_as(SQL)
            .bind(id)
            .fetch_optional(p)
            .await?);
        let Some(row) = row else { return Ok(None) };
        let owners: Vec<String> = read!(self, |p| sqlx::query_scalar(OWNERS)
            .bind(id)
            .fetch_all(p)
            .await?);
        row.into_desk(owners.into_iter().collect()).map(Some)
    }

    /// Every desk, by id.
    pub async fn list_desks(&self) -> Result<Vec<Desk>> {
        const SQL: &str = "SELECT id, department, level, segment, service FROM desks ORDER BY id";
        const OWNERS: &str = "SELECT desk_id, user_id FROM desk_owners";
        let rows: Vec<DeskRow> = read!(self, |p| sqlx::query_as(SQL).fetch_all(p).await?);
        let pairs: Vec<(String, String)> =
            read!(self, |p| sqlx::query_as(OWNERS).fetch_all(p).await?);
        self.assemble_desks(rows, pairs)
    }

    /// The desks a user owns, by id.
    pub async fn desks_owned_by(&self, user_id: &str) -> Result<Vec<Desk>> {
        const SQL: &str = "SELECT id, department, level, segment, service FROM desks \
             WHERE id IN (SELECT desk_id FROM desk_owners WHERE user_id = $1) ORDER BY id";
        const OWNERS: &str = "SELECT desk_id, user_id FROM desk_owners \
             WHERE desk_id IN (SELECT desk_id FROM desk_owners WHERE user_id = $1)";
        let rows: Vec<DeskRow> = read!(self, |p| sqlx::query_as(SQL)
            .bind(user_id)
            .fetch_all(p)
            .await?);
        let pairs: Vec<(String, String)> = read!(self, |p| sqlx::query_as(OWNERS)
            .bind(user_id)
            .fetch_all(p)
            .await?);
        self.assemble_desks(rows, pairs)
    }

    fn assemble_desks(
        &self,
        rows: Vec<DeskRow>,
        pairs: Vec<(String, String)>,
    ) -> Result<Vec<Desk>> {
        let mut owners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (desk, user) in pairs {
            owners.entry(desk).or_default().insert(user);
        }
        rows.into_iter()
            .map(|r| {
                let o = owners.remove(&r.id).unwrap_or_default();
                r.into_desk(o)
            })
            .collect()
    }
}
