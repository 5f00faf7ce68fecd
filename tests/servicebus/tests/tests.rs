//! The stand-in's server, checked over real sockets: with fe2o3-amqp's client (the
//! transport's library) and with Microsoft's Python SDK.

mod azure_sdk;
mod fe2o3_client;
mod support;
