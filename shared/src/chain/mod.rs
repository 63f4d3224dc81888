//! The chain: format version 1 (see docs/chain-format.md) and its verification.
