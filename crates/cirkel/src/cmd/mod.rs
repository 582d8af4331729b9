//! One module per command group; each parses nothing and renders its result.

pub mod alarms;
pub mod bucket;
pub mod config;
pub mod drills;
pub mod files;
pub mod follow;
pub mod lab;
pub mod notify;
pub mod pg;
pub mod recover;
pub mod redis;
pub mod repo;
pub mod scenario;
pub mod serve;
