//! imaged-transfer: parses its flags and runs the service, which lives in
//! the library ([`imaged_transfer::run`]) so its rules can be tested in-process.

use imaged_common::config::{self, Service};
use imaged_common::server;

fn main() {
    let args: imaged_transfer::Args = config::parse();
    let common = args.common.clone();
    server::run_main(Service::Transfer, &common, |config| {
        imaged_transfer::run(config, args)
    });
}
