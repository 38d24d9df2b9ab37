//! The end-to-end tests, one binary: each module starts the four real
//! processes (and, where a test needs it, a real registry, dockerd,
//! containerd or nats-server) on loopback and checks one area. One binary
//! links the tree once instead of once per file.

mod containerd;
mod cri;
mod differential;
mod differential_cli;
mod docker_api;
mod events;
mod fixtures_registry;
mod fleet;
mod fleet_split;
mod fleet_tls;
mod foundation;
mod gc_model;
mod grpc_clients;
mod hostile;
mod hostile_archives;
mod hostile_neighbours;
mod hostile_registries;
mod imagectl;
mod images;
mod install;
mod k8s;
mod launcher;
mod layers;
mod login;
mod metrics;
mod mirrors;
mod nats;
mod pull;
mod save_load;
mod security;
mod transfer_faults;
mod trust;
