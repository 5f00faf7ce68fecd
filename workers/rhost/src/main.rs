//! The R host binary (see lib docs).
fn main() {}
