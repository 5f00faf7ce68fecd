//! rfleet integration tests
