//! The peer: a member of the group, running an openraft node that holds the chain.

pub mod types;
