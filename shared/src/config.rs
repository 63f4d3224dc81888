//! config.yml
