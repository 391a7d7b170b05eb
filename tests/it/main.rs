//! All integration tests, built as one binary: real `dynakv` processes on
//! 127.0.0.1 driven over HTTP.

mod antientropy;
mod api;
mod architecture;
mod bad_input;
mod cluster;
mod durability;
mod openapi;
mod overload;
mod ownership;
mod startup;
mod support;
