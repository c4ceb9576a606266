//! The twelve statuses of Backend.AI v20.03 and which of them are terminal.

use std::fmt;
use std::str::FromStr;

/// A kernel's (and, mirrored from its master, a session's) lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Pending,
    Preparing,
    Building,
    Pulling,
    Running,
    Restarting,
    Resizing,
    Suspended,
    Terminating,
    Terminated,
    Error,
    Cancelled,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 12] = [
        Status::Pending,
        Status::Preparing,
        Status::Building,
        Status::Pulling,
        Status::Running,
        Status::Restarting,
        Status::Resizing,
        Status::Suspended,
        Status::Terminating,
        Status::Terminated,
        Status::Error,
        Status::Cancelled,
    ];

    /// The upper-case name used on the wire and in the read model.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Preparing => "PREPARING",
            Status::Building => "BUILDING",
            Status::Pulling => "PULLING",
            Status::Running => "RUNNING",
            Status::Restarting => "RESTARTING",
            Status::Resizing => "RESIZING",
            Status::Suspended => "SUSPENDED",
            Status::Terminating => "TERMINATING",
            Status::Terminated => "TERMINATED",
            Status::Error => "ERROR",
            Status::Cancelled => "CANCELLED",
        }
    }

    /// `TERMINATED` and `CANCELLED` are final: nothing changes a kernel after them.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Status::Terminated | Status::Cancelled)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of the twelve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}; valid statuses are {list}", list = Status::ALL.map(Status::as_str).join(", "))]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
        }
    }

    #[test]
    fn only_terminated_and_cancelled_are_terminal() {
        let terminal: Vec<_> = Status::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(terminal, [Status::Terminated, Status::Cancelled]);
    }

    #[test]
    fn unknown_status_lists_the_valid_ones() {
        let err = "RUNING".parse::<Status>().unwrap_err().to_string();
        assert!(err.contains("\"RUNING\"") && err.contains("PENDING") && err.contains("CANCELLED"));
    }
}
