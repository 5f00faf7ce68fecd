//! fe2o3-amqp's client against the stand-in (filled in below).
