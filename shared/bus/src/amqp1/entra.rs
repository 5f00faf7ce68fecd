//! Entra ID for Service Bus: the credential that signs a bus in when it has a namespace
//! and no connection string. On AKS that is workload identity (the webhook's
//! `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
//! `AZURE_AUTHORITY_HOST`), elsewhere in Azure the managed identity (`AZURE_CLIENT_ID`
//! picks a user-assigned one). Tokens are Microsoft's `azure_identity` crate's, for the
//! scope [`SCOPE`], put on CBS as `jwt`; it caches them and fetches a new one before the
//! old one expires. Its HTTP requests go through a reqwest client of ours: rustls with
//! ring, the public web CAs built in, and `bus.ca_file`'s CAs (a TLS-inspecting proxy).

use std::path::Path;
use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, Transport};
use azure_identity::{
    ClientAssertionCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};

/// The scope of a Service Bus token.
pub const SCOPE: &str = "https://servicebus.azure.net/.default";

/// A credential the bus signs in with. Compared by identity; its `Debug` says only what it
/// is.
#[derive(Clone)]
pub struct EntraId(pub Arc<dyn TokenCredential>);

impl std::fmt::Debug for EntraId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EntraId(..)")
    }
}

impl PartialEq for EntraId {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The HTTP transport of the credentials: see the module docs.
pub fn http_transport(ca_file: Option<&Path>) -> Result<Transport, String> {
    let tls = crate::amqp::tls::client_config(ca_file).map_err(|e| e.to_string())?;
    let client = reqwest_otel::Client::builder().tls_backend_preconfigured(tls).build().map_err(|e| e.to_string())?;
    Ok(Transport::new(Arc::new(client)))
}

/// Workload identity when `AZURE_FEDERATED_TOKEN_FILE` is set, else the managed identity.
pub fn credential_from_environment(ca_file: Option<&Path>) -> Result<EntraId, String> {
    let client_options = ClientOptions { transport: Some(http_transport(ca_file)?), ..ClientOptions::default() };
    let credential: Arc<dyn TokenCredential> = if std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        let options = WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions { client_options },
            ..WorkloadIdentityCredentialOptions::default()
        };
        WorkloadIdentityCredential::new(Some(options)).map_err(|e| format!("workload identity: {e}"))?
    } else {
        let user_assigned_id = std::env::var("AZURE_CLIENT_ID").ok().map(UserAssignedId::ClientId);
        let options = ManagedIdentityCredentialOptions { user_assigned_id, client_options };
        ManagedIdentityCredential::new(Some(options)).map_err(|e| format!("managed identity: {e}"))?
    };
    Ok(EntraId(credential))
}
