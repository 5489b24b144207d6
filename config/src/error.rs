//! The errors of a configuration file.

/// Why a configuration file was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not TOML, or not the expected shape: an unknown key, a missing one,
    /// a wrong type, a duration without a unit. The message shows the line.
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    /// Keys or sections of an older version of the file, each with its new
    /// name and a value for it.
    #[error("keys of an older version of this file; rename them (durations now take a unit: \"250ms\", \"10s\", \"15min\", \"72h\"):\n  {}", keys.join("\n  "))]
    Renamed {
        /// One line per old key: `[limits] keepalive_secs = 10 is now [relay.limits] keepalive = "10s"`.
        keys: Vec<String>,
    },
    /// A duration outside the range its key allows.
    #[error("[{section}] {key} = \"{value}\" is out of range: it must be {range} (for example {key} = \"{example}\")")]
    OutOfRange {
        /// The section, dotted (`relay.limits`).
        section: &'static str,
        /// The key.
        key: &'static str,
        /// The value as written back (`"0s"`).
        value: String,
        /// What is allowed (`at least "1s"`).
        range: String,
        /// A valid value.
        example: &'static str,
    },
}
