//! `make bench`'s last step: prints the figures every bench recorded in
//! this run as one table, with each goal and whether it is met.

use imaged_e2e::figures;

fn main() {
    let order = [
        "cri_hot_path",
        "first_pull",
        "pull",
        "gateway_hop",
        "metadata",
        "events",
        "snapshotter",
    ];
    let (table, met, goals) = figures::table(&order);
    println!("\nmake bench: every figure of this run (ratio = imaged / baseline; lower is better)");
    print!("{table}");
    println!("goals met: {met} of {goals}");
}
