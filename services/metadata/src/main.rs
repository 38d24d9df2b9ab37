//! imaged-metadata: parses its flags and runs the service, which lives in
//! the library ([`imaged_metadata::run`]) so its rules can be tested in-process.

use imaged_common::config::{self, Service};
use imaged_common::server;

fn main() {
    let args: imaged_metadata::Args = config::parse();
    let common = args.common.clone();
    server::run_main(Service::Metadata, &common, |config| {
        imaged_metadata::run(config, args)
    });
}
