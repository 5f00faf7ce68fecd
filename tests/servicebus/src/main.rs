//! `servicebus-standin`: not a server yet; this increment ships the queue and SAS rules only.

fn main() {
    eprintln!("servicebus-standin: the AMQP 1.0 server is not built yet (see the crate docs)");
    std::process::exit(2);
}
