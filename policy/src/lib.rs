//! Kakehashi access policy: confidentiality levels × terminal classes, and a
//! pure [`decide`] / [`explain`].
//!
//! Security officers write [`Rule`]s that match a desk's confidentiality level
//! (機密性レベル 1–3) × the terminal class (home / mobile / satellite office)
//! × optionally the desk's department, and say allow or deny, with hours,
//! the approved-plan requirement, MFA freshness, per-session step-up, time
//! limits and session [`Controls`]. [`decide`] takes a [`Request`], the
//! [`Policy`] and `now`, and returns a [`Decision`]: allow with controls and
//! [`Limits`], or deny with a stable [`ReasonCode`] and a sentence in Japanese
//! and English. No I/O here: no files, no clock, no network.
//!
//! Evaluation order (first failure wins):
//!
//! 1. desk in the `mynumber` segment → `segment_mynumber`, whatever the rules
//!    or BCP say;
//! 2. device not active → `device_blocked` / `device_lost` / `device_revoked`;
//! 3. the first rule (in order) matching level × class × department;
//! 4. ownership: only the desk's owners, unless that rule sets
//!    `desk_access = "department"`; no role, officers included, bypasses it
//!    → `not_desk_owner`;
//! 5. no matching rule → `no_rule` (deny by default); a deny rule →
//!    `level_not_permitted`;
//! 6. hours → `outside_hours`; the window is `[start, end)`: 08:30 is inside,
//!    17:15 is outside;
//! 7. plan → `plan_required` / `plan_not_approved` / `plan_other_day` /
//!    `plan_outside_window`;
//! 8. step-up → `step_up_required`; 9. MFA age → `mfa_required` / `mfa_too_old`.
//!
//! A BCP declaration that is in scope (all, or the desk's department) and not
//! expired waives only what it is configured to waive (plan, hours), never for
//! level 3 from home and never for `mynumber`; it expires on its own.
//!
//! An allowed session's `end_at` is the earliest of: the end of the hour
//! window (no overtime at home), the end of the plan, the end of a BCP
//! waiver the decision needed, the moment the MFA gets too old, and
//! `now + max_duration`. Re-deciding the same request at any time before
//! `end_at` (with the MFA age advanced) still allows it.
//!
//! # For the gateway
//!
//! * Build one [`Request`] per session request: the device's class comes from
//!   its certificate (map the pki crate's class to [`TerminalClass`]), its
//!   status from the store; the desk's level, segment, department and owners
//!   from the store; `plan` is the person's plan for the *local* date of
//!   `now` in the policy's time zone (prefer an approved one covering `now`);
//!   `bcp` is every declaration on record (expired ones are ignored here, so
//!   there is no need to filter), each with the relaxation copied from
//!   [`Policy::bcp_default_relax`] when it was declared unless the officer
//!   chose another; `mfa_age_secs` is the age of the freshest multi-factor
//!   authentication behind the session (the step-up assertion when
//!   `step_up` is true, else the morning login).
//! * Rule `departments` and BCP `Dept` scopes match the **desk's**
//!   department. Roles grant nothing; only owners (or, where a rule says
//!   `desk_access = "department"`, members of the desk's department) get in.
//! * On allow, put `controls` and [`Limits::to_ticket`] in the ticket and end
//!   the session at `limits.end_at`. On deny, send [`Decision::refusal`].
//! * Live re-evaluation: re-decide each live session with the same request
//!   rebuilt from the store (keep `step_up`, advance `mfa_age_secs`) whenever
//!   the policy, a device, a desk, a plan or a BCP declaration changes; with
//!   nothing changed, a session stays allowed until its `end_at`.
//!
//! ```
//! use kakehashi_policy::*;
//! let policy = Policy::from_toml(default_policy_toml()).unwrap();
//! assert_eq!(policy, Policy::default());
//! ```

// Library hygiene (issue #17): every public item documented and reachable,
// no silent narrowing `as` casts. Per crate, not workspace-wide: the gateway is not ready.
#![warn(unreachable_pub, missing_docs, clippy::cast_possible_truncation)]

mod decide;
mod default;
mod file;
mod model;
mod reason;
mod rules;
mod vocab;
mod what_if;

pub use decide::{decide, device_reason, explain, Decision, Explanation, Limits, Step, StepKind};
pub use default::default_policy_toml;
pub use file::{check, Diagnostic, PolicyError, Severity, FORMAT_VERSION, MAX_MINUTES};
pub use model::{BcpCtx, BcpScope, DeskCtx, DeviceCtx, PlanCtx, Request, UserCtx};
pub use reason::ReasonCode;
pub use rules::{
    format_timezone, parse_timezone, BcpRelax, Clipboard, Controls, Day, DeskAccess, Effect, Hours,
    Policy, Rule, TimeOfDay, WorkHours,
};
pub use vocab::{DeviceStatus, Level, Role, Segment, TerminalClass};
pub use what_if::{check_cli, decision_text, explain_cli, what_if_request, ExplainArgs, PlanArg};

#[cfg(test)]
mod props;
