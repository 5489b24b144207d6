//! What the configuration files of the gateway, the agent and the client
//! share (STYLE.md §5: a serde file struct validated into a typed config):
//!
//! - [`duration`]: a duration written with its unit (`"250ms"`, `"10s"`,
//!   `"15min"`, `"72h"`), parsed by `humantime`; a bare number is refused
//!   with a hint that shows it with a unit.
//! - [`DurationKey`]: range checks whose errors name the section, the key
//!   and a valid value.
//! - [`parse`] with a table of [`Renamed`] keys: a file written for an older
//!   version fails with the new name of every old key it holds (and the old
//!   value in its new form), instead of a bare "unknown field".

#![warn(unreachable_pub, missing_docs, clippy::cast_possible_truncation)]

mod duration;
mod error;
mod renamed;

pub use duration::{duration, fmt_duration, optional_duration, DurationKey};
pub use error::Error;
pub use renamed::Renamed;

/// Parse a configuration file's text as `T`. Keys and sections listed in
/// `renamed` are looked for first, so an old file gets [`Error::Renamed`]
/// naming all of them rather than an "unknown field" for the first one.
pub fn parse<T: serde::de::DeserializeOwned>(text: &str, renamed: &[Renamed]) -> Result<T, Error> {
    let table: toml::Table = toml::from_str(text)?;
    let keys = renamed::find(&table, renamed);
    if !keys.is_empty() {
        return Err(Error::Renamed { keys });
    }
    Ok(toml::from_str(text)?)
}
