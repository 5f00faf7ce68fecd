//! The route table: every route once, with who may call it. The router, the OpenAPI
//! document and the credential check all come from [`table`], so none of them can list a
//! route the others do not know.
//!
//! Each entry is a handler with its `#[utoipa::path]` annotation (utoipa-axum's `routes!`
//! takes the path, the method and the operation from it) and an [`Access`]. With auth on,
//! every route whose access needs a credential gets [`auth::require`] as its own layer,
//! and so does the fallback, so an unknown route is a 401 without credentials and the
//! routes cannot be enumerated.

use std::collections::BTreeSet;

use axum::routing::{any, MethodRouter};
use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use crate::auth::{self, Auth};
use crate::{oip, openapi, routes, score, vetiver, AppState};

/// Who may call a route when auth is on (with auth off, anyone may call every route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Probes: load balancers and Kubernetes probe without credentials.
    Open,
    /// The API's description and Swagger UI: open with `auth.public_docs`, else a credential.
    Docs,
    /// Everything else.
    Credential,
}

impl Access {
    pub fn needs_credential(self, auth: &Auth) -> bool {
        match self {
            Access::Open => false,
            Access::Docs => !auth.public_docs(),
            Access::Credential => true,
        }
    }
}

/// Every route, in the order the document lists them. `/token` is served only with auth on:
/// there is nothing to exchange for a token otherwise.
fn table(auth: Option<&Auth>) -> Vec<(Access, UtoipaMethodRouter<AppState>)> {
    use Access::*;
    let mut table = vec![
        (Open, routes!(routes::healthy)),
        (Open, routes!(routes::live)),
        (Open, routes!(routes::ready)),
        // Prometheus scrapes without credentials, as probes do.
        (Open, routes!(routes::metrics)),
        (Credential, routes!(routes::list_models)),
        (Credential, routes!(routes::get_model)),
        (Credential, routes!(routes::get_model_version)),
        (Credential, routes!(score::score_default)),
        (Credential, routes!(score::score_model)),
        (Credential, routes!(score::score_model_version)),
        // vetiver / plumber clients.
        (Credential, routes!(vetiver::predict_default)),
        (Credential, routes!(vetiver::predict_model)),
        (Open, routes!(vetiver::ping)),
        (Credential, routes!(vetiver::metadata)),
        (Credential, routes!(vetiver::prototype)),
        // Open Inference Protocol (KServe v2 / Triton).
        (Credential, routes!(oip::server_metadata)),
        (Open, routes!(oip::live)),
        (Open, routes!(oip::ready)),
        (Credential, routes!(oip::model_metadata)),
        (Credential, routes!(oip::model_version_metadata)),
        (Credential, routes!(oip::model_ready)),
        (Credential, routes!(oip::model_version_ready)),
        (Credential, routes!(oip::infer)),
        (Credential, routes!(oip::infer_version)),
        // The API's own description.
        (Docs, routes!(openapi::openapi_json)),
        (Docs, routes!(openapi::swagger_json)),
    ];
    if auth.is_some() {
        table.push((Credential, routes!(auth::token)));
    }
    table
}

/// What the table makes: the router (without state, fallbacks or the outer layers) and
/// the OpenAPI document's generated part, with the paths that need a credential.
pub struct Api {
    pub router: Router<AppState>,
    pub openapi: utoipa::openapi::OpenApi,
    /// Paths (as the document writes them) whose every operation needs a credential.
    pub secured: BTreeSet<String>,
}

impl Api {
    /// The document's generated part for this router (`auth`: whether auth is on).
    pub fn document(&self, auth: bool) -> serde_json::Value {
        openapi::base_document(self.openapi.clone(), &self.secured, auth)
    }
}

/// Builds the router and the document from [`table`] for this `[auth]`.
pub fn build(auth: Option<&Auth>) -> Api {
    let mut router = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi());
    let mut secured = BTreeSet::new();
    for (access, (schemas, paths, method_router)) in table(auth) {
        let guarded = auth.filter(|auth| access.needs_credential(auth));
        if guarded.is_some() {
            secured.extend(paths.paths.keys().cloned());
        }
        // The 405 of a route is set here, inside the guard: without credentials a wrong
        // method is a 401 like everything else that needs one.
        let method_router = guard(method_router.fallback(routes::method_not_allowed), guarded);
        router = router.routes((schemas, paths, method_router));
    }
    // Swagger UI's pages are served, not documented as operations; the one page the
    // document lists (`GET /docs/`) is added by `ApiDoc`'s `docs` entry.
    let docs_guard = auth.filter(|auth| Access::Docs.needs_credential(auth));
    if docs_guard.is_some() {
        secured.insert(format!("{}/", openapi::DOCS_PATH));
    }
    let (router, mut openapi) = router.split_for_parts();
    openapi.merge(openapi::DocsDoc::openapi());
    let swagger: Router<AppState> = openapi::swagger_ui().into();
    let swagger = match docs_guard {
        Some(auth) => swagger.layer(axum::middleware::from_fn_with_state(auth.clone(), auth::require)),
        None => swagger,
    };
    let not_found: MethodRouter<()> = guard(any(routes::route_not_found), auth);
    let router = router.merge(swagger).fallback_service(not_found);
    Api { router, openapi, secured }
}

/// `method_router` behind the credential check when `auth` is given.
fn guard<S: Clone + Send + Sync + 'static>(method_router: MethodRouter<S>, auth: Option<&Auth>) -> MethodRouter<S> {
    match auth {
        Some(auth) => method_router.layer(axum::middleware::from_fn_with_state(auth.clone(), auth::require)),
        None => method_router,
    }
}
