//! One AdmissionReview in, one out: the whole decision, free of I/O. The server feeds it the body
//! and the member cluster's world; tests, the fuzz test and the benchmark call it directly.

use kube::api::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{GROUP, KubeDirectorApp, KubeDirectorCluster, KubeDirectorConfig};
use crate::model::catalog::parse;
use crate::model::validate::{FieldError, describe_first};

use super::world::World;
use super::{app, cluster, config};

/// Which webhook called: defaults are filled in by the mutating one, rules checked by the validating one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Mutate,
    Validate,
}

/// A request that is not a usable AdmissionReview: answered with HTTP 400 and this message.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not an AdmissionReview (admission.k8s.io/v1): {0}")]
    Malformed(String),
    #[error("the AdmissionReview carries no request")]
    NoRequest,
}

/// Errors listed in one denial; the rest are counted.
const MAX_ERRORS_SHOWN: usize = 20;

const KINDS: [&str; 3] = ["KubeDirectorApp", "KubeDirectorCluster", "KubeDirectorConfig"];

/// Decides one review. `world` is `None` while the member cluster's caches are not ready: the
/// request is then refused with a message saying so (never allowed unchecked).
pub fn handle(
    phase: Phase,
    body: &[u8],
    context: &str,
    world: Option<&dyn World>,
) -> Result<AdmissionReview<DynamicObject>, ReviewError> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    let req: AdmissionRequest<DynamicObject> = review.try_into().map_err(|_| ReviewError::NoRequest)?;
    Ok(respond(phase, &req, context, world).into_review())
}

/// Whether deciding this request needs the clusters as they are now rather than as cached:
/// validating an app update or delete, or a kd-global-config update (a key in use) or delete. `None` for unreadable bodies.
pub fn needs_live_clusters(phase: Phase, body: &[u8]) -> Option<bool> {
    #[derive(serde::Deserialize)]
    struct Peek {
        request: PeekRequest,
    }
    #[derive(serde::Deserialize)]
    struct PeekRequest {
        kind: PeekKind,
        operation: String,
    }
    #[derive(serde::Deserialize)]
    struct PeekKind {
        kind: String,
    }
    let p: Peek = serde_json::from_slice(body).ok()?;
    let (kind, op) = (p.request.kind.kind.as_str(), p.request.operation.as_str());
    Some(
        phase == Phase::Validate
            && matches!(
                (kind, op),
                ("KubeDirectorApp", "UPDATE" | "DELETE") | ("KubeDirectorConfig", "UPDATE" | "DELETE")
            ),
    )
}

fn respond(
    phase: Phase,
    req: &AdmissionRequest<DynamicObject>,
    context: &str,
    world: Option<&dyn World>,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(req);
    let kind = req.kind.kind.as_str();
    if req.kind.group != GROUP || !KINDS.contains(&kind) {
        return response.deny(format!(
            "{}/{} {kind} is not handled by the kubedirector admission webhook (allowed: {} of {GROUP}); check the webhook configuration's rules",
            req.kind.group,
            req.kind.version,
            KINDS.join(", ")
        ));
    }
    let Some(world) = world else {
        return response.deny(format!(
            "member cluster {context:?}: the admission caches are not filled yet; retry in a few seconds"
        ));
    };
    let ns = req.namespace.clone().unwrap_or_default();
    let subject = format!("{kind} {ns}/{}", display_name(req));
    match phase {
        Phase::Mutate => mutate(response, req, kind, &ns, world),
        Phase::Validate => {
            let errors = validate(req, kind, &ns, world);
            if errors.is_empty() {
                response
            } else {
                let verdict = if req.operation == Operation::Delete {
                    "cannot be deleted"
                } else {
                    "is invalid"
                };
                response.deny(format!(
                    "{subject} {verdict}: {}",
                    describe_first(&errors, MAX_ERRORS_SHOWN)
                ))
            }
        }
    }
}

fn display_name(req: &AdmissionRequest<DynamicObject>) -> String {
    if !req.name.is_empty() {
        return req.name.clone();
    }
    // Created with generateName: the name is not chosen yet.
    req.object
        .as_ref()
        .and_then(|o| o.metadata.generate_name.clone())
        .map(|g| format!("{g}*"))
        .unwrap_or_default()
}

/// A typed view of the object; a field of the wrong shape becomes a field error.
fn typed<T: DeserializeOwned>(obj: &DynamicObject) -> Result<T, FieldError> {
    parse::<T>(obj).map_err(|message| match message.split_once(": ") {
        Some((field, rest)) if !field.contains(' ') => FieldError {
            field: field.to_string(),
            message: rest.to_string(),
        },
        _ => FieldError {
            field: "object".to_string(),
            message,
        },
    })
}

fn mutate(
    response: AdmissionResponse,
    req: &AdmissionRequest<DynamicObject>,
    kind: &str,
    ns: &str,
    world: &dyn World,
) -> AdmissionResponse {
    let Some(obj) = req
        .object
        .as_ref()
        .filter(|_| matches!(req.operation, Operation::Create | Operation::Update))
    else {
        return response;
    };
    let Ok(before) = serde_json::to_value(obj) else {
        return response;
    };
    let mut after = before.clone();
    match kind {
        "KubeDirectorApp" => match typed::<KubeDirectorApp>(obj) {
            Ok(a) => app::mutate(&mut after, &a.spec),
            Err(_) => return response, // the validating webhook reports it
        },
        "KubeDirectorCluster" if req.operation == Operation::Create && cluster::is_restore(obj) => {
            cluster::mark_restoring(&mut after);
            if world.manages(ns) {
                cluster::add_finalizer(&mut after);
            }
        }
        "KubeDirectorCluster" if !cluster::is_deleting(obj) => match typed::<KubeDirectorCluster>(obj) {
            Ok(c) => {
                let old = req
                    .old_object
                    .as_ref()
                    .and_then(|o| typed::<KubeDirectorCluster>(o).ok())
                    .map(|o| o.spec);
                let errors = cluster::seal_secret_keys(&mut after, old.as_ref(), world);
                if !errors.is_empty() {
                    let subject = format!("{kind} {ns}/{}", display_name(req));
                    return response.deny(format!(
                        "{subject} is invalid: {}",
                        describe_first(&errors, MAX_ERRORS_SHOWN)
                    ));
                }
                cluster::mutate(&mut after, ns, &c.spec, world);
                if req.operation == Operation::Create && world.manages(ns) {
                    cluster::add_finalizer(&mut after);
                }
            }
            Err(_) => return response,
        },
        "KubeDirectorConfig" => match typed::<KubeDirectorConfig>(obj) {
            Ok(c) => config::mutate(&mut after, &c.spec),
            Err(_) => return response,
        },
        _ => return response,
    }
    let patch = json_patch::diff(&before, &after);
    if patch.0.is_empty() {
        return response;
    }
    match response.clone().with_patch(patch) {
        Ok(patched) => patched,
        Err(e) => response.deny(format!("internal error building the defaults patch: {e}")),
    }
}

fn validate(req: &AdmissionRequest<DynamicObject>, kind: &str, ns: &str, world: &dyn World) -> Vec<FieldError> {
    let (new, old) = (req.object.as_ref(), req.old_object.as_ref());
    let name = req.name.as_str();
    match (kind, &req.operation, new, old) {
        ("KubeDirectorApp", Operation::Create | Operation::Update, Some(new), _) => {
            let mut errors = match typed::<KubeDirectorApp>(new) {
                Ok(a) => app::validate(&a.spec),
                Err(e) => vec![e],
            };
            if let Some(old) = old {
                errors.extend(app::in_use(world, ns, name, old, Some(new)));
            }
            errors
        }
        ("KubeDirectorApp", Operation::Delete, _, Some(old)) => app::in_use(world, ns, name, old, None),
        ("KubeDirectorCluster", Operation::Create, Some(new), _) if cluster::is_restore(new) => {
            Vec::new() // re-created by a restore tool: as it was stored (KubeDirector skips it too)
        }
        ("KubeDirectorCluster", Operation::Delete, _, Some(old)) => cluster::deletable_while_restoring(old),
        ("KubeDirectorCluster", Operation::Update, Some(new), Some(old))
            if cluster::is_restoring(old) && old.data.get("spec") != new.data.get("spec") =>
        {
            vec![FieldError {
                field: "spec".to_string(),
                message: format!(
                    "cannot change while the cluster is being restored (label {})",
                    crate::model::labels::RESTORING
                ),
            }]
        }
        ("KubeDirectorCluster", Operation::Create | Operation::Update, Some(new), old) => {
            if cluster::is_deleting(new) || old.is_some_and(|o| o.data.get("spec") == new.data.get("spec")) {
                return Vec::new(); // metadata only, or on its way out: the finalizer must stay removable
            }
            let spec = match typed::<KubeDirectorCluster>(new) {
                Ok(c) => c.spec,
                Err(e) => return vec![e],
            };
            let old_spec = old.and_then(|o| typed::<KubeDirectorCluster>(o).ok()).map(|c| c.spec);
            cluster::validate(ns, &spec, old_spec.as_ref(), world)
        }
        ("KubeDirectorConfig", Operation::Create | Operation::Update, Some(new), old) => {
            let old = old.and_then(|o| typed::<KubeDirectorConfig>(o).ok()).map(|c| c.spec);
            match typed::<KubeDirectorConfig>(new) {
                Ok(c) => config::validate(name_of(new, name), ns, &c.spec, old.as_ref(), world),
                Err(e) => vec![e],
            }
        }
        ("KubeDirectorConfig", Operation::Delete, _, _) => config::deletable(name, ns, world),
        _ => Vec::new(),
    }
}

fn name_of<'a>(obj: &'a DynamicObject, fallback: &'a str) -> &'a str {
    obj.metadata.name.as_deref().unwrap_or(fallback)
}

/// The patch a review carries, decoded (tests).
pub fn patch_of(review: &AdmissionReview<DynamicObject>) -> Option<Value> {
    let bytes = review.response.as_ref()?.patch.as_ref()?;
    serde_json::from_slice(bytes).ok()
}
