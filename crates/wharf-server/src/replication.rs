//! Push replication: after a push, each enabled rule of the registry whose repository (and tag)
//! pattern matches queues a job; workers on every node copy the image to the rule's upstream
//! as a client would push it (blobs the upstream lacks, index children, the manifest, then its
//! referrers), retrying with back-off. A replication that fails never affects the push.

use std::sync::Arc;
use std::time::Duration;

use wharf_meta::{ReplicationJob, ReplicationRule};
use wharf_oci::{Digest, Manifest, Reference};

use crate::service::Scope;
use crate::upstream::{self, UpstreamClient};
use crate::AppState;

/// A job is given up after this many attempts.
pub const MAX_ATTEMPTS: i64 = 10;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// A claim not finished after this long belongs to a node that stopped; another node takes it.
const STALE_CLAIM: Duration = Duration::from_secs(30 * 60);
/// How often an idle worker looks for jobs that came due (retries, other nodes' pushes).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Finished jobs are kept this long as history.
const HISTORY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Referrers of referrers are followed this deep (a signature of an SBOM, say).
const REFERRER_DEPTH: usize = 2;

/// The repository a rule copies `repository` to.
pub fn target_of(rule: &ReplicationRule, repository: &str) -> String {
    rule.target.replace("{name}", repository)
}

/// Whether a push of `repository` (with `tag`, or by digest; `referrer` when the manifest has a
/// subject) is copied by `rule`. Pushes by digest are copied only when they are referrers
/// (signatures, SBOMs): an index's children go with the index.
pub fn matches(
    rule: &ReplicationRule,
    repository: &str,
    tag: Option<&str>,
    referrer: bool,
) -> bool {
    if !rule.enabled || !wharf_auth::glob_matches(&rule.repositories, repository) {
        return false;
    }
    match tag {
        Some(t) => rule.tags.is_empty() || wharf_auth::glob_matches(&rule.tags, t),
        None => referrer,
    }
}

/// The wait before attempt `attempts + 1`: `base` doubled each time, at most an hour.
pub fn backoff(base: Duration, attempts: i64) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 20) as u32;
    base.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// Queues the copies a push asks for. Never fails the push: a failure is logged.
pub(crate) async fn queue(
    state: &AppState,
    scope: &Scope<'_>,
    digest: &str,
    tag: Option<&str>,
    referrer: bool,
) {
    let rules = match state.meta.replication_rules(scope.registry_id).await {
        Ok(rules) => rules,
        Err(e) => {
            tracing::warn!(digest, error = %e, "replication rules unreadable; push not replicated");
            return;
        }
    };
    let mut queued = false;
    for rule in rules
        .iter()
        .filter(|r| matches(r, scope.repository, tag, referrer))
    {
        match state
            .meta
            .queue_replication(rule.id, scope.repository, tag, digest)
            .await
        {
            Ok(()) => queued = true,
            Err(e) => {
                tracing::warn!(rule = rule.name, digest, error = %e, "replication not queued")
            }
        }
    }
    if queued {
        state.replication_wakeup.notify_one();
    }
}

/// One worker per node: takes due jobs until none is left, then waits for a push on this node
/// or the next poll. Runs until the process ends.
pub async fn run_worker(state: Arc<AppState>) {
    let mut pruned = std::time::Instant::now() - HISTORY;
    loop {
        if pruned.elapsed() > Duration::from_secs(3600) {
            let before = wharf_meta::now_millis() - HISTORY.as_millis() as i64;
            if let Err(e) = state.meta.prune_replication_history(before).await {
                tracing::warn!(error = %e, "replication history not pruned");
            }
            pruned = std::time::Instant::now();
        }
        let stale = wharf_meta::now_millis() - STALE_CLAIM.as_millis() as i64;
        match state.meta.claim_replication(stale).await {
            Ok(Some(job)) => run_job(&state, job).await,
            Ok(None) => {
                let _ = tokio::time::timeout(IDLE_POLL, state.replication_wakeup.notified()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "replication queue unreadable");
                tokio::time::sleep(IDLE_POLL).await;
            }
        }
    }
}

async fn run_job(state: &AppState, job: ReplicationJob) {
    let outcome = match state.meta.replication_rule_by_id(job.rule_id).await {
        Ok(Some(rule)) => replicate(state, &rule, &job).await,
        // Deleted meanwhile: its jobs went with it.
        Ok(None) => return,
        Err(e) => Err(e.to_string()),
    };
    let (error, retry_at) = match &outcome {
        Ok(()) => {
            tracing::info!(
                repository = job.repository,
                digest = job.digest,
                "replicated"
            );
            (None, None)
        }
        Err(why) if job.attempts < MAX_ATTEMPTS => {
            let wait = backoff(state.settings.replication_backoff, job.attempts);
            tracing::warn!(repository = job.repository, digest = job.digest, attempt = job.attempts,
                retry_in_s = wait.as_secs_f64(), error = %why, "replication failed; retrying");
            crate::metrics::replication_done("retrying");
            let at = wharf_meta::now_millis() + wait.as_millis() as i64;
            (Some(why.as_str()), Some(at))
        }
        Err(why) => {
            tracing::error!(repository = job.repository, digest = job.digest, error = %why,
                "replication failed for good");
            crate::metrics::replication_done("failed");
            (Some(why.as_str()), None)
        }
    };
    if let Err(e) = state.meta.end_replication(job.id, error, retry_at).await {
        tracing::warn!(job = job.id, error = %e, "replication outcome not recorded");
    }
}

/// A copy in progress: where from, where to, and how to talk to the upstream.
struct Copy<'a> {
    state: &'a AppState,
    scope: Scope<'a>,
    client: UpstreamClient<'a>,
    auth: Option<String>,
    target: String,
    url: &'a str,
}

/// Copies the job's manifest, what it needs and its referrers; an error is one sentence.
async fn replicate(
    state: &AppState,
    rule: &ReplicationRule,
    job: &ReplicationJob,
) -> Result<(), String> {
    let registry = state
        .meta
        .registry_by_id(rule.registry_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the registry was deleted")?;
    let key_id = registry.key_id.as_deref();
    let opened = upstream::Opened::load(state, registry.id, key_id, &rule.upstream_host)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "the upstream {} has no credentials any more",
                rule.upstream_host
            )
        })?;
    let credentials = opened.credentials();
    let client = UpstreamClient::for_transfer(&credentials, state.settings.upstream_timeout)
        .map_err(|r| r.detail.clone())?;
    let target = target_of(rule, &job.repository);
    let auth = client
        .login(Some(&format!("repository:{target}:pull,push")))
        .await
        .map_err(|r| r.detail.clone())?;
    let copy = Copy {
        state,
        scope: Scope {
            registry_id: registry.id,
            key_id,
            scanning: false,
            repository: &job.repository,
            actor: format!("replication:{}", rule.name),
        },
        client,
        auth,
        target,
        url: &opened.url,
    };
    let digest = Digest::parse(&job.digest).map_err(|e| e.to_string())?;
    copy.manifest(&digest, job.tag.as_deref(), REFERRER_DEPTH)
        .await
}

impl Copy<'_> {
    fn send(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let path = format!("/v2/{}/{path}", self.target);
        self.client.request(method, &path, self.auth.as_deref())
    }

    /// The upstream's answer to a request, or the sentence that says why it failed.
    async fn answer(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
        ok: &[u16],
    ) -> Result<reqwest::Response, String> {
        let r = req.send().await.map_err(|e| {
            format!(
                "{} did not answer ({what}): {}",
                self.url,
                upstream::error_chain(&e)
            )
        })?;
        let status = r.status().as_u16();
        if ok.contains(&status) {
            return Ok(r);
        }
        let body = r.text().await.unwrap_or_default();
        let excerpt = upstream::excerpt(&body, 200);
        Err(format!(
            "{} answered HTTP {status} to {what} of {}: {excerpt}",
            self.url, self.target
        ))
    }

    /// Copies a manifest (by `tag`, or by digest) after what it references, then its
    /// referrers, `depth` levels down.
    fn manifest<'s>(
        &'s self,
        digest: &'s Digest,
        tag: Option<&'s str>,
        depth: usize,
    ) -> futures_util::future::BoxFuture<'s, Result<(), String>> {
        Box::pin(async move {
            let service = self.state.service();
            let stored = service
                .manifest(&self.scope, &Reference::Digest(digest.clone()))
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{digest} is no longer in {}", self.scope.repository))?;
            let parsed = Manifest::parse(Some(&stored.media_type), &stored.content)
                .map_err(|e| format!("{digest}: {e}"))?;
            for child in parsed.required_manifests() {
                self.manifest(&child.digest, None, 0).await?;
            }
            for blob in parsed.required_blobs() {
                self.blob(&blob.digest).await?;
            }
            let reference = tag.map_or_else(|| digest.to_string(), str::to_string);
            let req = self
                .send(reqwest::Method::PUT, &format!("manifests/{reference}"))
                .header(reqwest::header::CONTENT_TYPE, &stored.media_type)
                .body(stored.content);
            self.answer(req, &format!("the manifest {reference}"), &[200, 201])
                .await?;
            if depth == 0 {
                return Ok(());
            }
            let referrers = service
                .referrers(&self.scope, digest.as_str(), None)
                .await
                .map_err(|e| e.to_string())?;
            for r in referrers {
                let d = Digest::parse(&r.digest).map_err(|e| e.to_string())?;
                self.manifest(&d, None, depth - 1).await?;
            }
            Ok(())
        })
    }

    /// Copies a blob the upstream lacks, streamed from the store.
    async fn blob(&self, digest: &Digest) -> Result<(), String> {
        let what = format!("the blob {digest}");
        let head = self.send(reqwest::Method::HEAD, &format!("blobs/{digest}"));
        if self.answer(head, &what, &[200, 404]).await?.status() == 200 {
            return Ok(());
        }
        let service = self.state.service();
        let size = service
            .blob_size(&self.scope, digest)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{digest} is no longer in {}", self.scope.repository))?;
        let started = self
            .answer(
                self.send(reqwest::Method::POST, "blobs/uploads/"),
                &what,
                &[202],
            )
            .await?;
        let location = started
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| format!("{} opened an upload without a Location", self.url))?;
        let separator = if location.contains('?') { '&' } else { '?' };
        let location = format!("{location}{separator}digest={digest}");
        let body = service
            .read_blob(&self.scope, digest, 0, size)
            .await
            .map_err(|e| e.to_string())?;
        let put = self
            .client
            .request_location(reqwest::Method::PUT, &location, self.auth.as_deref())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(body));
        self.answer(put, &what, &[201]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(repositories: &str, tags: &str) -> ReplicationRule {
        ReplicationRule {
            id: 1,
            registry_id: 1,
            name: "r".into(),
            repositories: repositories.into(),
            tags: tags.into(),
            upstream_id: 1,
            upstream_host: "up".into(),
            target: "mirror/{name}".into(),
            enabled: true,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn rules_match_repositories_tags_and_referrers() {
        let r = rule("team/*", "v*");
        assert!(matches(&r, "team/app", Some("v1"), false));
        assert!(!matches(&r, "team/app", Some("latest"), false));
        assert!(!matches(&r, "other/app", Some("v1"), false));
        assert!(
            matches(&r, "team/app", None, true),
            "a signature follows its image"
        );
        assert!(
            !matches(&r, "team/app", None, false),
            "index children go with the index"
        );
        assert!(matches(&rule("*", ""), "x", Some("anything"), false));
        assert!(!matches(
            &ReplicationRule {
                enabled: false,
                ..rule("*", "")
            },
            "x",
            Some("t"),
            false
        ));
        assert_eq!(target_of(&r, "team/app"), "mirror/team/app");
    }

    #[test]
    fn back_off_doubles_up_to_an_hour() {
        let base = Duration::from_secs(10);
        assert_eq!(backoff(base, 1), Duration::from_secs(10));
        assert_eq!(backoff(base, 2), Duration::from_secs(20));
        assert_eq!(backoff(base, 4), Duration::from_secs(80));
        assert_eq!(backoff(base, 50), MAX_BACKOFF);
    }
}
