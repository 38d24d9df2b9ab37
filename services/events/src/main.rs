//! imaged-events: parses its flags and runs the service, which lives in
//! the library ([`imaged_events::run`]) so its rules can be tested in-process.

use imaged_common::config::{self, Service};
use imaged_common::server;

fn main() {
    let args: imaged_events::Args = config::parse();
    let common = args.common.clone();
    server::run_main(Service::Events, &common, |config| {
        imaged_events::run(config, args)
    });
}
