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

/// The services reflection lists (what `grpcurl list` prints).
pub(crate) async fn service_names(channel: tonic::transport::Channel) -> Vec<String> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected {response:?}")
    };
    list.service.into_iter().map(|s| s.name).collect()
}

/// The services reflection lists over its older revision (`v1alpha`, which older grpcurl builds
/// and grpcio's reflection client speak).
pub(crate) async fn service_names_v1alpha(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected {response:?}")
    };
    list.service.into_iter().map(|s| s.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_and_health_answer_without_credentials() {
    let hub = TestHub::start(TlsMode::Tls).await;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let channel = grpc_channel::connect(&hub.grpc_url(), &ca, None, None)
        .await
        .unwrap();

    let names = service_names(channel.clone()).await;
    let older = service_names_v1alpha(channel.clone()).await;
    assert!(
        older.iter().any(|n| n == "outpost.v1.TaskService"),
        "{older:?}"
    );
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

/// A tool push `bytes` long, sent with `bearer` (if any); the refusal.
async fn push_of(hub: &TestHub, bytes: usize, bearer: Option<&str>) -> tonic::Status {
    use outpost_proto::v1::PushToolRequest;
    use outpost_proto::v1::tool_service_client::ToolServiceClient;
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let channel = grpc_channel::connect(&hub.grpc_url(), &ca, None, None)
        .await
        .unwrap();
    let request = PushToolRequest {
        name: "big".into(),
        component: vec![0_u8; bytes],
        policy_toml: String::new(),
        signature: None,
    };
    let request = match bearer {
        Some(token) => grpc_channel::with_bearer(request, token),
        None => tonic::Request::new(request),
    };
    ToolServiceClient::new(channel)
        .max_encoding_message_size(usize::MAX)
        .push_tool(request)
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_credential_are_refused_before_their_body_is_read() {
    use outpost_trust::auth::Role;
    let hub = TestHub::start(TlsMode::Tls).await;
    // Larger than the hub decodes: were the body read first, the answer would be its size.
    let huge = 40 * 1024 * 1024;
    let anonymous = push_of(&hub, huge, None).await;
    assert_eq!(
        anonymous.code(),
        tonic::Code::Unauthenticated,
        "{anonymous:?}"
    );
    assert_eq!(anonymous.message(), "missing bearer token");
    let forged = push_of(&hub, huge, Some("not.a.jwt")).await;
    assert_eq!(forged.code(), tonic::Code::Unauthenticated, "{forged:?}");

    let viewer = hub.token("v", Role::Viewer);
    let refused = push_of(&hub, huge, Some(&viewer)).await;
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("role viewer may not call /outpost.v1.ToolService/PushTool"),
        "{}",
        refused.message()
    );
    // An admin's oversized push is read and refused for its size (the limit is real).
    let admin = hub.token("a", Role::Admin);
    let too_big = push_of(&hub, huge, Some(&admin)).await;
    assert!(
        matches!(
            too_big.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{too_big:?}"
    );
    // The join service, open to anyone, reads no large message either.
    let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
    let channel = grpc_channel::connect(&hub.grpc_url(), &ca, None, None)
        .await
        .unwrap();
    let err = outpost_proto::v1::join_service_client::JoinServiceClient::new(channel)
        .begin_join(outpost_proto::v1::BeginJoinRequest {
            node_id: "x".repeat(1024 * 1024),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err:?}"
    );
}
