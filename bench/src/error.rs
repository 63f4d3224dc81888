use thiserror::Error;

/// Why a benchmark could not run or finish.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("cannot start {what}: {why}")]
    Start { what: String, why: String },
    #[error("{0} did not happen before the deadline")]
    Deadline(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected answer from {from}: {why}")]
    Protocol { from: String, why: String },
    #[error("{0}")]
    Other(String),
}
