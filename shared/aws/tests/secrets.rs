//! Integration secrets named in the config, read from a real Secrets
//! Manager API (moto) through the cache the functions use.

mod moto;

use std::sync::Arc;

use tocsin_aws::secrets::AwsSecrets;
use tocsin_core::secrets::{CachedSecrets, SecretRef, SecretSource};

async fn client() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&moto::sdk_config().await)
}

async fn create(client: &aws_sdk_secretsmanager::Client, name: &str, value: &str) {
    client
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .expect("create the secret");
}

#[tokio::test]
async fn plain_and_json_secret_strings_are_read_and_rotation_shows_after_the_cache() {
    let client = client().await;
    let plain = moto::unique("tocsin/hook-plain");
    let json = moto::unique("tocsin/hook-json");
    create(&client, &plain, "plain-signing-secret").await;
    create(&client, &json, r#"{"secret": "json-signing-secret"}"#).await;

    let source = AwsSecrets::new(client.clone());
    let read = |name: &str| SecretRef::SecretsManager(name.to_owned());
    assert_eq!(
        source.fetch(&read(&plain)).await.unwrap().expose(),
        "plain-signing-secret"
    );
    assert_eq!(
        source.fetch(&read(&json)).await.unwrap().expose(),
        "json-signing-secret"
    );

    let missing = source.fetch(&read("tocsin/never-created")).await.unwrap_err();
    assert_eq!(missing.operation, "secretsmanager GetSecretValue");

    // A rotated value is seen once the cached one expires, not before.
    let cached = CachedSecrets::new(Arc::new(AwsSecrets::new(client.clone())));
    assert_eq!(
        cached.fetch(&read(&plain)).await.unwrap().expose(),
        "plain-signing-secret"
    );
    client
        .put_secret_value()
        .secret_id(&plain)
        .secret_string("rotated-signing-secret")
        .send()
        .await
        .expect("rotate");
    assert_eq!(
        cached.fetch(&read(&plain)).await.unwrap().expose(),
        "plain-signing-secret"
    );
    let fresh = CachedSecrets::with_ttl(Arc::new(AwsSecrets::new(client)), std::time::Duration::ZERO);
    assert_eq!(
        fresh.fetch(&read(&plain)).await.unwrap().expose(),
        "rotated-signing-secret"
    );
}
