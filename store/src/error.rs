//! The store's error type.

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database URL is neither a SQLite path nor a `postgres://` URL.
    #[error("unsupported database url {0:?}: expected sqlite:///path, a file path or postgres://")]
    BadUrl(String),
    /// An argument failed validation before it reached the database.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The argument or field.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The record does not exist.
    #[error("{what} not found")]
    NotFound {
        /// The kind of record.
        what: &'static str,
    },
    /// A record with the same key already exists.
    #[error("{what} already exists")]
    AlreadyExists {
        /// The kind of record.
        what: &'static str,
    },
    /// The record refers to a user, device or desk that does not exist.
    #[error("{what} refers to an unknown user, device or desk")]
    UnknownReference {
        /// The kind of record being written.
        what: &'static str,
    },
    /// The code or token has expired.
    #[error("{what} has expired")]
    Expired {
        /// The kind of record.
        what: &'static str,
    },
    /// The one-time code was already used.
    #[error("{what} was already used")]
    AlreadyUsed {
        /// The kind of record.
        what: &'static str,
    },
    /// A credential's signature counter did not move forward: the
    /// authenticator may have been cloned. Nothing was changed.
    #[error("credential signature counter did not move forward (stored {stored}, presented {presented})")]
    CounterRegression {
        /// The counter stored after the last use.
        stored: u32,
        /// The counter the refused assertion carried.
        presented: u32,
    },
    /// The token was revoked.
    #[error("{what} has been revoked")]
    Revoked {
        /// The kind of record.
        what: &'static str,
    },
    /// The record is not in a state that allows the change.
    #[error("{what} is already {state}")]
    Conflict {
        /// The kind of record.
        what: &'static str,
        /// Its current state.
        state: String,
    },
    /// A stored value could not be decoded (the database was edited by hand).
    #[error("corrupt stored {what}: {reason}")]
    Corrupt {
        /// The kind of value.
        what: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The database refused or failed the operation.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error("schema migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Creating the directory of the SQLite file failed.
    #[error("cannot create the database directory")]
    Io(#[from] std::io::Error),
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// The database could not be reached (connection refused or lost, no
    /// pooled connection within the acquire time-out): nothing about the
    /// request is known, and a caller refuses it as `store_unavailable`
    /// rather than as an internal error.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Database(e) => matches!(
                e,
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            ),
            _ => false,
        }
    }

    pub(crate) fn corrupt(what: &'static str, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            what,
            reason: reason.into(),
        }
    }
}

/// Maps constraint violations of an insert or update of `what` to the
/// store's own variants; everything else stays a database error.
pub(crate) fn on_write(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| {
        if let sqlx::Error::Database(db) = &e {
            match db.kind() {
                sqlx::error::ErrorKind::UniqueViolation => return Error::AlreadyExists { what },
                sqlx::error::ErrorKind::ForeignKeyViolation => {
                    return Error::UnknownReference { what }
                }
                sqlx::error::ErrorKind::CheckViolation => {
                    return Error::invalid(what, "value out of range")
                }
                _ => {}
            }
        }
        Error::Database(e)
    }
}
