//! Integration tests: each starts a hub in-process on free loopback ports in a temp directory and talks
//! to it with a real MQTT client (rumqttc) and a real HTTP client.

mod contracts;
mod core;
mod exports;
mod homeassistant;
mod learning;
mod rest;
mod simulate;
mod support;
