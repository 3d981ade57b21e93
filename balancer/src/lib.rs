//! Usher's balancer: an L7 proxy in front of LMS pods.
//!
//! The request path is [`proxy::handle`]; selection ([`balance`]) and health
//! ([`health`]) are pure state machines; live per-endpoint state
//! ([`endpoint`]) survives config reloads, which publish a new immutable
//! [`snapshot::Snapshot`].

pub mod admin;
pub mod balance;
pub mod cache;
pub mod config;
pub mod connection;
pub mod discovery;
pub mod endpoint;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod pool_update;
pub mod proxy;
pub mod queue;
pub mod ratelimit;
pub mod retry_budget;
pub mod server;
pub mod sessions;
pub mod snapshot;
pub mod state;
pub mod sticky;
pub mod summary;
pub mod tls;

pub use server::{Balancer, Options};
