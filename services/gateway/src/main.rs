//! imaged-gateway: parses its flags and runs the service, which lives in
//! the library ([`imaged_gateway::run`]) so its rules can be tested in-process.

use imaged_common::config::{self, Service};
use imaged_common::server;

fn main() {
    let args: imaged_gateway::Args = config::parse();
    let common = args.common.clone();
    server::run_main(Service::Gateway, &common, |config| {
        imaged_gateway::run(config, args)
    });
}
