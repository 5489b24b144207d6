//! Data the policy decision reads: telework plans, BCP declarations and
//! the versioned policy document.

use crate::audit::Audit;
use crate::db::Store;
use crate::error::{on_write, Error, Result};
use crate::types::{random_id, validate_date, validate_id, validate_text, PlanStatus};

// ---------------------------------------------------------------- plans

/// A telework plan as submitted by staff (or imported from HR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSpec {
    /// Whose plan.
    pub user_id: String,
    /// The local date, `YYYY-MM-DD`.
    pub date: String,
    /// Start, minutes after local midnight (0..1440).
    pub start_min: u16,
    /// End, minutes after local midnight (start < end <= 1440).
    pub end_min: u16,
    /// Where the person will work (free text).
    pub place: String,
}

impl PlanSpec {
    /// Checks what [`Store::submit_plan`] requires, without a store: a valid
    /// user id and date, hours inside one day with start before end, and a
    /// place of at most 256 bytes without control characters.
    pub fn validate(&self) -> Result<()> {
        validate_id("user id", &self.user_id)?;
        validate_date("plan date", &self.date)?;
        if self.start_min >= self.end_min || self.end_min > 1440 {
            return Err(Error::invalid(
                "plan hours",
                "start must be before end, within the day",
            ));
        }
        validate_text("plan place", &self.place, 256, false)
    }
}

/// A stored telework plan.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Plan {
    /// Plan id (`plan-` and 16 hex digits).
    pub id: String,
    /// Whose plan.
    pub user_id: String,
    /// The local date, `YYYY-MM-DD`.
    #[sqlx(rename = "day")]
    pub date: String,
    /// Start, minutes after local midnight.
    #[sqlx(try_from = "i64")]
    pub start_min: u16,
    /// End, minutes after local midnight.
    #[sqlx(try_from = "i64")]
    pub end_min: u16,
    /// Where.
    pub place: String,
    /// Approval state.
    #[sqlx(try_from = "String")]
    pub status: PlanStatus,
    /// When submitted.
    pub submitted_at: i64,
    /// The chief who decided.
    pub decided_by: Option<String>,
    /// When decided.
    pub decided_at: Option<i64>,
}

impl Plan {
    /// Whether the plan is approved and covers `minute` (after local midnight).
    pub fn covers(&self, minute: u16) -> bool {
        self.status == PlanStatus::Approved && self.start_min <= minute && minute < self.end_min
    }
}

// ---------------------------------------------------------------- BCP

/// Who a BCP declaration covers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BcpScope {
    /// Everyone (stored as `*`).
    All,
    /// One department.
    Department(String),
}

impl BcpScope {
    fn to_db(&self) -> &str {
        match self {
            BcpScope::All => "*",
            BcpScope::Department(d) => d,
        }
    }

    fn from_db(s: String) -> Self {
        if s == "*" {
            BcpScope::All
        } else {
            BcpScope::Department(s)
        }
    }

    /// Whether the scope covers `department`.
    pub fn covers(&self, department: &str) -> bool {
        match self {
            BcpScope::All => true,
            BcpScope::Department(d) => d == department,
        }
    }
}

/// A BCP declaration to make.
#[derive(Debug, Clone, PartialEq)]
pub struct BcpSpec {
    /// Who it covers.
    pub scope: BcpScope,
    /// Why (e.g. 大雪).
    pub reason: String,
    /// What it relaxes, as the policy crate defines it (stored as JSON text).
    pub relax: serde_json::Value,
    /// Start (unix seconds).
    pub starts_at: i64,
    /// Automatic end (unix seconds).
    pub ends_at: i64,
}

/// A stored BCP declaration.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Bcp {
    /// Declaration id (`bcp-` and 16 hex digits).
    pub id: String,
    /// Who it covers.
    pub scope: BcpScope,
    /// Why.
    pub reason: String,
    /// What it relaxes.
    pub relax: serde_json::Value,
    /// Start.
    pub starts_at: i64,
    /// Automatic end.
    pub ends_at: i64,
    /// When ended early by an officer.
    pub ended_at: Option<i64>,
    /// Who declared it.
    pub declared_by: String,
    /// Who ended it.
    pub ended_by: Option<String>,
}

impl Bcp {
    /// Whether it is in force at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        self.starts_at <= now && now < self.ends_at && self.ended_at.is_none_or(|e| now < e)
    }
}

#[derive(sqlx::FromRow)]
struct BcpRow {
    id: String,
    scope: String,
    reason: String,
    relax: String,
    starts_at: i64,
    ends_at: i64,
    ended_at: Option<i64>,
    declared_by: String,
    ended_by: Option<String>,
}

impl TryFrom<BcpRow> for Bcp {
    type Error = Error;
    fn try_from(r: BcpRow) -> Result<Bcp> {
        Ok(Bcp {
            id: r.id,
            scope: BcpScope::from_db(r.scope),
            reason: r.reason,
            relax: serde_json::from_str(&r.relax)
                .map_err(|e| Error::corrupt("bcp relax", e.to_string()))?,
            starts_at: r.starts_at,
            ends_at: r.ends_at,
            ended_at: r.ended_at,
            declared_by: r.declared_by,
            ended_by: r.ended_by,
        })
    }
}

// ---------------------------------------------------------------- policy

/// One version of the policy document.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct PolicyDoc {
    /// 1, 2, 3, …
    pub version: i64,
    /// The TOML text.
    #[sqlx(rename = "body")]
    pub text: String,
    /// Who saved it.
    pub author: String,
    /// When.
    pub created: i64,
}

/// The largest policy document accepted.
const MAX_POLICY: usize = 1024 * 1024;

/// A policy version with its author and time (`put_policy`, `seed_policy`).
const INSERT_POLICY: &str =
    "INSERT INTO policies (version, body, author, created) VALUES ($1, $2, $3, $4)";

impl Store {
    /// Submits a telework plan (status `submitted`).
    pub async fn submit_plan(&self, spec: &PlanSpec, audit: Audit) -> Result<Plan> {
        spec.validate()?;
        let id = random_id("plan")?;
        const SQL: &str = "INSERT INTO telework_plans \
             (id, user_id, day, start_min, end_min, place, status, submitted_at, decided_by, decided_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'submitted', $7, NULL, NULL)";
        write_tx!(self, audit, |tx| {
            sqlx::query(SQL)
                .bind(&id)
                .bind(&spec.user_id)
                .bind(&spec.date)
                .bind(i64::from(spec.start_min))
                .bind(i64::from(spec.end_min))
                .bind(&spec.place)
                .bind(audit.at)
                .execute(&mut *tx)
                .await
                .map_err(on_write("telework plan"))?;
        });
        Ok(Plan {
            id,
            user_id: spec.user_id.clone(),
            date: spec.date.clone(),
            start_min: spec.start_min,
            end_min: spec.end_min,
            place: spec.place.clone(),
            status: PlanStatus::Submitted,
            submitted_at: audit.at,
            decided_by: None,
            decided_at: None,
        })
    }

    /// Approves or rejects a submitted plan; the decider is `audit.actor`.
    /// A plan is decided once (`Conflict` afterwards).
    pub async fn decide_plan(&self, id: &str, approve: bool, audit: Audit) -> Result<Plan> {
        let status = if approve {
            PlanStatus::Approved
        } else {
            PlanStatus::Rejected
        };
        const SQL: &str = "UPDATE telework_plans SET status = $2, decided_by = $3, decided_at = $4 \
             WHERE id = $1 AND status = 'submitted' \
             RETURNING id, user_id, day, start_min, end_min, place, status, submitted_at, decided_by, decided_at";
        const STATE: &str = "SELECT status FROM telework_plans WHERE id = $1";
        let (plan, _) = write_tx!(self, audit, |tx| {
            let plan: Option<Plan> = sqlx::query_as(SQL)
                .bind(id)
                .bind(status.as_str())
                .bind(&audit.actor)
                .bind(audit.at)
                .fetch_optional(&mut *tx)
                .await?;
            match plan {
                Some(p) => p,
                None => {
                    let state: Option<String> = sqlx::query_scalar(STATE)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    return Err(match state {
                        None => Error::NotFound {
                            what: "telework plan",
                        },
                        Some(state) => Error::Conflict {
                            what: "telework plan",
                            state,
                        },
                    });
                }
            }
        });
        Ok(plan)
    }

    /// The plan with `id`.
    pub async fn get_plan(&self, id: &str) -> Result<Option<Plan>> {
        const SQL: &str =
            "SELECT id, user_id, day, start_min, end_min, place, status, submitted_at, \
             decided_by, decided_at FROM telework_plans WHERE id = $1";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(id)
            .fetch_optional(p)
            .await?))
    }

    /// A user's plans, latest date first.
    pub async fn plans_for_user(&self, user_id: &str) -> Result<Vec<Plan>> {
        const SQL: &str =
            "SELECT id, user_id, day, start_min, end_min, place, status, submitted_at, \
             decided_by, decided_at FROM telework_plans WHERE user_id = $1 \
             ORDER BY day DESC, start_min, id";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(user_id)
            .fetch_all(p)
            .await?))
    }

    /// The plans of everyone in a department (for the section chief),
    /// latest date first.
    pub async fn plans_for_department(&self, department: &str) -> Result<Vec<Plan>> {
        const SQL: &str =
            "SELECT p.id, p.user_id, p.day, p.start_min, p.end_min, p.place, p.status, \
             p.submitted_at, p.decided_by, p.decided_at FROM telework_plans p \
             JOIN users u ON u.id = p.user_id WHERE u.department = $1 \
             ORDER BY p.day DESC, p.user_id, p.start_min, p.id";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(department)
            .fetch_all(p)
            .await?))
    }

    /// Every plan dated `date` (`YYYY-MM-DD`) or later, by user and date:
    /// one query for the gateway's re-evaluation of all live sessions.
    pub async fn plans_since(&self, date: &str) -> Result<Vec<Plan>> {
        validate_date("plan date", date)?;
        const SQL: &str =
            "SELECT id, user_id, day, start_min, end_min, place, status, submitted_at, \
             decided_by, decided_at FROM telework_plans WHERE day >= $1 \
             ORDER BY user_id, day DESC, start_min, id";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(date)
            .fetch_all(p)
            .await?))
    }

    /// A user's approved plans for one date, by start time.
    pub async fn find_approved_plans(&self, user_id: &str, date: &str) -> Result<Vec<Plan>> {
        const SQL: &str =
            "SELECT id, user_id, day, start_min, end_min, place, status, submitted_at, \
             decided_by, decided_at FROM telework_plans \
             WHERE user_id = $1 AND day = $2 AND status = 'approved' ORDER BY start_min, id";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(user_id)
            .bind(date)
            .fetch_all(p)
            .await?))
    }

    /// Declares BCP mode; the declarer is `audit.actor`.
    pub async fn declare_bcp(&self, spec: &BcpSpec, audit: Audit) -> Result<Bcp> {
        if let BcpScope::Department(d) = &spec.scope {
            validate_text("bcp scope", d, 128, false)?;
            if d == "*" {
                return Err(Error::invalid("bcp scope", "use BcpScope::All"));
            }
        }
        validate_text("bcp reason", &spec.reason, 1024, false)?;
        if spec.ends_at <= spec.starts_at || spec.ends_at <= audit.at {
            return Err(Error::invalid(
                "bcp period",
                "must end after it starts and in the future",
            ));
        }
        let relax = spec.relax.to_string();
        if relax.len() > 64 * 1024 {
            return Err(Error::invalid("bcp relax", "longer than 64 KiB"));
        }
        let id = random_id("bcp")?;
        const SQL: &str = "INSERT INTO bcp_declarations \
             (id, scope, reason, relax, starts_at, ends_at, ended_at, declared_by, ended_by) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, NULL)";
        write_tx!(self, audit, |tx| {
            sqlx::query(SQL)
                .bind(&id)
                .bind(spec.scope.to_db())
                .bind(&spec.reason)
                .bind(&relax)
                .bind(spec.starts_at)
                .bind(spec.ends_at)
                .bind(&audit.actor)
                .execute(&mut *tx)
                .await
                .map_err(on_write("bcp declaration"))?;
        });
        Ok(Bcp {
            id,
            scope: spec.scope.clone(),
            reason: spec.reason.clone(),
            relax: spec.relax.clone(),
            starts_at: spec.starts_at,
            ends_at: spec.ends_at,
            ended_at: None,
            declared_by: audit.actor.clone(),
            ended_by: None,
        })
    }

    /// Ends a BCP declaration now (`audit.at`, by `audit.actor`).
    pub async fn end_bcp(&self, id: &str, audit: Audit) -> Result<Bcp> {
        const SQL: &str = "UPDATE bcp_declarations SET ended_at = $2, ended_by = $3 \
             WHERE id = $1 AND ended_at IS NULL \
             RETURNING id, scope, reason, relax, starts_at, ends_at, ended_at, declared_by, ended_by";
        const EXISTS: &str = "SELECT COUNT(*) FROM bcp_declarations WHERE id = $1";
        let (row, _) = write_tx!(self, audit, |tx| {
            let row: Option<BcpRow> = sqlx::query_as(SQL)
                .bind(id)
                .bind(audit.at)
                .bind(&audit.actor)
                .fetch_optional(&mut *tx)
                .await?;
            match row {
                Some(r) => r,
                None => {
                    let n: i64 = sqlx::query_scalar(EXISTS)
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?;
                    return Err(if n == 0 {
                        Error::NotFound {
                            what: "bcp declaration",
                        }
                    } else {
                        Error::Conflict {
                            what: "bcp declaration",
                            state: "ended".into(),
                        }
                    });
                }
            }
        });
        Bcp::try_from(row)
    }

    /// The declarations in force at `now`.
    pub async fn active_bcp(&self, now: i64) -> Result<Vec<Bcp>> {
        const SQL: &str =
            "SELECT id, scope, reason, relax, starts_at, ends_at, ended_at, declared_by, \
             ended_by FROM bcp_declarations \
             WHERE starts_at <= $1 AND ends_at > $1 AND (ended_at IS NULL OR ended_at > $1) \
             ORDER BY starts_at, id";
        let rows: Vec<BcpRow> = read!(self, |p| sqlx::query_as(SQL).bind(now).fetch_all(p).await?);
        rows.into_iter().map(Bcp::try_from).collect()
    }

    /// Every declaration, latest start first.
    pub async fn list_bcp(&self) -> Result<Vec<Bcp>> {
        const SQL: &str =
            "SELECT id, scope, reason, relax, starts_at, ends_at, ended_at, declared_by, \
             ended_by FROM bcp_declarations ORDER BY starts_at DESC, id";
        let rows: Vec<BcpRow> = read!(self, |p| sqlx::query_as(SQL).fetch_all(p).await?);
        rows.into_iter().map(Bcp::try_from).collect()
    }

    /// Saves a new version of the policy document (TOML, validated by the
    /// caller); the author is `audit.actor`. Returns the new version.
    pub async fn put_policy(&self, text: &str, audit: Audit) -> Result<PolicyDoc> {
        if text.is_empty() || text.len() > MAX_POLICY {
            return Err(Error::invalid("policy", "must be 1 byte to 1 MiB"));
        }
        const NEXT: &str = "SELECT COALESCE(MAX(version), 0) + 1 FROM policies";
        let (version, _) = write_tx!(self, audit, |tx| {
            let version: i64 = sqlx::query_scalar(NEXT).fetch_one(&mut *tx).await?;
            sqlx::query(INSERT_POLICY)
                .bind(version)
                .bind(text)
                .bind(&audit.actor)
                .bind(audit.at)
                .execute(&mut *tx)
                .await
                .map_err(on_write("policy"))?;
            version
        });
        Ok(PolicyDoc {
            version,
            text: text.to_owned(),
            author: audit.actor.clone(),
            created: audit.at,
        })
    }

    /// Saves `text` as version 1 only when the store holds no policy yet,
    /// and returns the policy in force with whether this call saved it.
    /// The check and the insert are one serialised write transaction, so
    /// gateways starting together on an empty database seed it once.
    pub async fn seed_policy(&self, text: &str, audit: Audit) -> Result<(PolicyDoc, bool)> {
        if text.is_empty() || text.len() > MAX_POLICY {
            return Err(Error::invalid("policy", "must be 1 byte to 1 MiB"));
        }
        const CURRENT: &str =
            "SELECT version, body, author, created FROM policies ORDER BY version DESC LIMIT 1";
        write_tx!(self, audit, |tx| {
            let current: Option<PolicyDoc> =
                sqlx::query_as(CURRENT).fetch_optional(&mut *tx).await?;
            if let Some(doc) = current {
                // Rolled back with the transaction: no audit record either.
                return Ok((doc, false));
            }
            sqlx::query(INSERT_POLICY)
                .bind(1_i64)
                .bind(text)
                .bind(&audit.actor)
                .bind(audit.at)
                .execute(&mut *tx)
                .await
                .map_err(on_write("policy"))?;
        });
        Ok((
            PolicyDoc {
                version: 1,
                text: text.to_owned(),
                author: audit.actor.clone(),
                created: audit.at,
            },
            true,
        ))
    }

    /// The latest policy document, if any was saved.
    pub async fn current_policy(&self) -> Result<Option<PolicyDoc>> {
        const SQL: &str =
            "SELECT version, body, author, created FROM policies ORDER BY version DESC LIMIT 1";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .fetch_optional(p)
            .await?))
    }

    /// One version of the policy document.
    pub async fn policy_version(&self, version: i64) -> Result<Option<PolicyDoc>> {
        const SQL: &str = "SELECT version, body, author, created FROM policies WHERE version = $1";
        Ok(read!(self, |p| sqlx::query_as(SQL)
            .bind(version)
            .fetch_optional(p)
            .await?))
    }
}
