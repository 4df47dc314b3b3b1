//! What `grpcurl -insecure host:port list` and health probes rely on: reflection lists Outpost's
//! services and the standard health service answers SERVING, both over the hub's TLS listener.

use outpost_config::TlsMode;
use outpost_tests::TestHub;
use outpost_trust::grpc_channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_and_health_answer_without_credentials() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let channel = grpc_channel::connect(&hub.grpc_url(), &ca, None, None)
        .await
        .unwrap();

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected {response:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "outpost.v1.JoinService",
        "outpost.v1.NodeRegistry",
        "outpost.v1.TokenService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }

    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "outpost.v1.NodeRegistry".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}
