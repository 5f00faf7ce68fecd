//! rfleet's integration tests, one binary (see `lib.rs` for the support code).
//!
//! Each module starts real `rfleet serve` processes with fixture models made by R and
//! checks answers against R's own `predict`.

#[path = "suite/amqp.rs"]
mod amqp;
#[path = "suite/auth.rs"]
mod auth;
#[path = "suite/autoscale.rs"]
mod autoscale;
#[path = "suite/bad_input.rs"]
mod bad_input;
#[path = "suite/batch.rs"]
mod batch;
#[path = "suite/batching.rs"]
mod batching;
#[path = "suite/cli.rs"]
mod cli;
#[path = "suite/conventions.rs"]
mod conventions;
#[path = "suite/deploy.rs"]
mod deploy;
#[path = "suite/faults.rs"]
mod faults;
#[path = "suite/http.rs"]
mod http;
#[path = "suite/images.rs"]
mod images;
#[path = "suite/keda.rs"]
mod keda;
#[path = "suite/native.rs"]
mod native;
#[path = "suite/observability.rs"]
mod observability;
#[path = "suite/package.rs"]
mod package;
#[path = "suite/predictions.rs"]
mod predictions;
#[path = "suite/servicebus.rs"]
mod servicebus;
#[path = "suite/tls.rs"]
mod tls;
#[path = "suite/versions.rs"]
mod versions;
