use super::*;

#[test]
fn the_plan_fetches_only_what_is_not_stored_and_counts_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let layers = LayerStore::open(dir.path()).unwrap();
    let diff_ids: Vec<Digest> = ["base", "app", "top"]
        .iter()
        .map(|n| Digest::sha256_of(n.as_bytes()))
        .collect();
    let chains = chain_ids(&diff_ids);
    let base = Layer {
        chain_id: chains[0].clone(),
        diff_id: diff_ids[0].clone(),
        parent: None,
        size: 1,
        blob: None,
        inodes: 1,
        tar_size: 0,
        gzip: None,
    };
    layers.commit(layers.stage().unwrap(), base).unwrap();
    let descs: Vec<OciDescriptor> = [100, 20, 3]
        .iter()
        .map(|size| OciDescriptor {
            size: *size,
            ..Default::default()
        })
        .collect();
    let plan = LayerPlan::new(&layers, &descs, &chains);
    assert_eq!(plan.fetch, [false, true, true]);
    assert_eq!(plan.totals, [0, 20, 3]);
    assert_eq!(plan.total(), 23);
}
