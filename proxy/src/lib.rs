//! Filled by the group issue.
