//! The request side of the model: who asks, from which terminal, for which
//! desk, with which plan and BCP declarations.

use time::{Date, OffsetDateTime};

use crate::rules::BcpRelax;
use crate::vocab::{DeviceStatus, Level, Role, Segment, TerminalClass};

/// The person asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCtx {
    /// User id.
    pub id: String,
    /// Department (所属).
    pub department: String,
    /// Roles.
    pub roles: Vec<Role>,
}

/// The terminal the request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCtx {
    /// Device id.
    pub id: String,
    /// Terminal class, from the device certificate.
    pub class: TerminalClass,
    /// Status in the store.
    pub status: DeviceStatus,
}

/// The desk PC asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeskCtx {
    /// Desk id.
    pub id: String,
    /// Confidentiality level.
    pub level: Level,
    /// Network segment.
    pub segment: Segment,
    /// Department that owns the desk; rule `departments` and BCP scopes match it.
    pub department: String,
    /// User ids of the desk's owners.
    pub owners: Vec<String>,
}

/// The person's telework plan for the day of the request, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanCtx {
    /// Local date (in the policy's time zone) the plan is for.
    pub date: Date,
    /// Start, minutes after local midnight (inclusive).
    pub start_min: u16,
    /// End, minutes after local midnight (exclusive; at most 1440).
    pub end_min: u16,
    /// Approved by the section chief.
    pub approved: bool,
}

/// Which desks a BCP declaration covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BcpScope {
    /// Every department.
    All,
    /// The desks of one department.
    Dept(String),
}

/// A BCP (emergency) declaration currently on record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BcpCtx {
    /// Which desks it covers.
    pub scope: BcpScope,
    /// What it relaxes (usually a copy of the policy's `bcp_default_relax`
    /// taken when it was declared).
    pub relax: BcpRelax,
    /// It stops applying at this instant (exclusive).
    pub until: OffsetDateTime,
}

/// Everything `decide` needs to know about one session request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The person.
    pub user: UserCtx,
    /// The terminal.
    pub device: DeviceCtx,
    /// The desk.
    pub desk: DeskCtx,
    /// The person's plan for today, if any.
    pub plan: Option<PlanCtx>,
    /// BCP declarations on record (expired ones are ignored).
    pub bcp: Vec<BcpCtx>,
    /// Age in seconds of the freshest multi-factor authentication behind this
    /// request: the step-up assertion if there is one, else the login.
    /// `None`: no multi-factor authentication.
    pub mfa_age_secs: Option<u64>,
    /// A WebAuthn assertion was made for this session (step-up).
    pub step_up: bool,
}
