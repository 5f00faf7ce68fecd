//! The AMQP 1.0 transport: Azure Service Bus, or a plain AMQP 1.0 broker.

pub mod credentials;
