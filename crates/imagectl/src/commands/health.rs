//! `imagectl health`: a process's gRPC health, for scripts and probes.

use tonic::transport::Channel;

/// Asks a process's gRPC health service; exits 1 unless it is serving.
pub async fn run(channel: Channel, service: String) -> anyhow::Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(HealthCheckRequest { service })
        .await?
        .into_inner();
    let status = ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown);
    println!("{}", status.as_str_name());
    if status != ServingStatus::Serving {
        std::process::exit(1);
    }
    Ok(())
}
