//! The `aws_identity_center` provider: AWS IAM Identity Center account
//! assignments, made and taken back through the official SDK. The target is
//! `ACCOUNT_ID/PERMISSION_SET_NAME`; the account is the user's `UserName` in
//! the identity store, resolved to its user id (`GetUserId`) at each call.
//! A grant creates the assignment (principal type `USER`, target type
//! `AWS_ACCOUNT`) and a revoke deletes it; both wait for AWS's request to
//! finish (`SUCCEEDED`, or `FAILED` with AWS's reason in the error) within
//! the provider's `timeout`. Credentials come from the standard AWS chain.
//!
//! Idempotence is read, not assumed: before creating, and before deleting,
//! the user's assignments in the account are listed
//! (`ListAccountAssignmentsForPrincipal`), so an assignment already there
//! is a grant done and one already gone is a revoke done. A
//! `ConflictException` (another request on the same assignment under way)
//! is done when the listing then shows the wanted state, and otherwise a
//! failed attempt that is retried.
//!
//! An unknown user name or permission set name is a failed attempt whose
//! message names it, not a refusal: a user provisioned by SCIM a minute
//! after the ticket was approved, or a permission set created just after,
//! is what a requester expects to work on the next attempt, and the grant
//! fails for good once `jobs.apply_attempts` are spent. Only a target that
//! breaks the syntax is refused. For a revoke, an unknown user, or a target
//! no assignment could have (AWS's own syntax), holds nothing: done.
//!
//! Permission set names are resolved to ARNs from a cache refilled by
//! listing the instance's sets when a name is missing or the listing is
//! older than `SETS_TTL`; a set's name never changes in AWS, so each ARN is
//! described once. Revokes and `holds` never go through that cache: they
//! match the user's assignments by the names of their ARNs, so a set
//! deleted and made again under the same name is still found. Drift lists
//! the set's assignments in the account (`ListAccountAssignments`) and
//! names each `USER` principal by its `UserName` (`DescribeUser`, cached
//! for `USERS_TTL`); assignments to groups are not a user's access and are
//! left out, and so is a principal the identity store no longer knows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration as StdDuration;

use aws_sdk_identitystore as identitystore;
use aws_sdk_ssoadmin as ssoadmin;
use chrono::{DateTime, Duration, Utc};
use futures_util::future::join_all;
use futures_util::future::BoxFuture;
use ssoadmin::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use ssoadmin::types::{
    AccountAssignmentOperationStatus, ListAccountAssignmentsFilter, PrincipalType, StatusValues,
    TargetType,
};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::{Call, Deps, Provider, ProviderError};
use crate::clock::Clock;
use crate::config::{
    invalid, AwsIdentityCenterProvider, ConfigDuration, ConfigError, DriftMode, ProviderSection,
};
use crate::domain::{shown, TargetRule};

/// How long a listing of the instance's permission sets is trusted for
/// names it holds (a missing name always lists again).
const SETS_TTL: Duration = Duration::minutes(5);
/// How long a user id's `UserName` is trusted for drift checks (a user can
/// be renamed).
const USERS_TTL: Duration = Duration::minutes(5);
/// The longest permission set name AWS accepts.
const MAX_SET_NAME: usize = 32;
/// How many `DescribePermissionSet` calls run at once while a listing is
/// named.
const DESCRIBE_AT_ONCE: usize = 8;
/// The first and the longest pause between two reads of a request's status.
const FIRST_POLL: StdDuration = StdDuration::from_millis(200);
const LONGEST_POLL: StdDuration = StdDuration::from_secs(2);

/// The target split into its AWS account id and permission set name, both
/// checked against AWS's own rules (12 digits; `[\w+=,.@-]{1,32}`).
pub fn parse_target(target: &str) -> Result<(&str, &str), String> {
    let Some((account, set)) = target.split_once('/') else {
        return Err("a target is `ACCOUNT_ID/PERMISSION_SET_NAME`".into());
    };
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the AWS account id is 12 digits".into());
    }
    if set.is_empty()
        || set.len() > MAX_SET_NAME
        || !set
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
    {
        return Err(format!(
            "a permission set name is 1 to {MAX_SET_NAME} ASCII letters, digits and `_+=,.@-`"
        ));
    }
    Ok((account, set))
}

impl TargetRule for AwsIdentityCenterProvider {
    fn check_target(&self, target: &str) -> Result<(), String> {
        parse_target(target).map(|_| ())
    }
}

/// `arn:PARTITION:sso:::instance/ssoins-ID` (or `ins-ID`), as AWS writes an
/// instance's ARN.
fn check_instance_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.split(':').collect();
    let ok = match parts.as_slice() {
        ["arn", partition, "sso", "", "", resource] => {
            (*partition == "aws"
                || partition.strip_prefix("aws-").is_some_and(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                }))
                && resource
                    .strip_prefix("instance/")
                    .and_then(|id| id.strip_prefix("ssoins-").or(id.strip_prefix("ins-")))
                    .is_some_and(|id| {
                        id.len() == 16
                            && id
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                    })
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(
            "an Identity Center instance ARN is `arn:aws:sso:::instance/ssoins-` and 16 characters"
                .into(),
        )
    }
}

/// `d-` and ten characters, or a UUID, as AWS shows identity store ids.
fn check_identity_store_id(id: &str) -> Result<(), String> {
    let short = id.strip_prefix("d-").is_some_and(|rest| {
        rest.len() == 10
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    });
    let uuid = uuid::Uuid::try_parse(id).is_ok() && id.len() == 36;
    if short || uuid {
        Ok(())
    } else {
        Err("an identity store id is `d-` and ten characters (`d-1234567890`), or a UUID".into())
    }
}

fn check_region(region: &str) -> Result<(), String> {
    if !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Ok(())
    } else {
        Err("a region is lowercase letters, digits and `-` (`eu-west-1`)".into())
    }
}

fn check_endpoint(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("an endpoint is an http:// or https:// URL with a host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("an endpoint URL holds no credentials".into());
    }
    Ok(())
}

impl ProviderSection for AwsIdentityCenterProvider {
    fn timeout(&self) -> Option<ConfigDuration> {
        Some(self.timeout)
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        check_instance_arn(&self.instance_arn)
            .map_err(|m| invalid(format!("{at}.instance_arn"), m))?;
        check_identity_store_id(&self.identity_store_id)
            .map_err(|m| invalid(format!("{at}.identity_store_id"), m))?;
        check_region(&self.region).map_err(|m| invalid(format!("{at}.region"), m))?;
        if let Some(url) = &self.endpoint_url {
            check_endpoint(url).map_err(|m| invalid(format!("{at}.endpoint_url"), m))?;
        }
        Ok(())
    }

    fn build(&self, name: &str, deps: &Deps) -> Box<dyn Provider> {
        Box::new(AwsIdentityCenter::new(name, self, deps.clock.clone()))
    }

    fn drift(&self) -> Option<DriftMode> {
        self.drift
    }
}

/// The two SDK clients, made on the first call: loading the AWS
/// configuration is asynchronous, and building providers is not.
struct Clients {
    sso: ssoadmin::Client,
    ids: identitystore::Client,
}

/// The instance's permission sets as last listed.
#[derive(Default)]
struct Sets {
    /// ARN → name; a set's name never changes, so this is never stale.
    names: HashMap<String, String>,
    /// Name → ARN, from the last listing.
    arns: HashMap<String, String>,
    listed_at: Option<DateTime<Utc>>,
}

/// The `aws_identity_center` provider.
pub struct AwsIdentityCenter {
    name: String,
    cfg: AwsIdentityCenterProvider,
    clock: Arc<dyn Clock>,
    clients: OnceCell<Clients>,
    sets: Mutex<Sets>,
    /// User id → (`UserName`, when read), for drift checks.
    users: Mutex<HashMap<String, (String, DateTime<Utc>)>>,
}

/// A lock whose holder panicked still guards plain maps that every writer
/// leaves whole.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An SDK failure as a retried provider error: AWS's error code and message
/// for an answer, a short cause otherwise. No credential reaches it (the
/// SDK does not put keys in its errors, and `redact` scrubs URLs' and
/// `key=value` secrets besides).
fn aws_error<E, R>(what: &str, e: &SdkError<E, R>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let text = match e {
        SdkError::ServiceError(_) => format!(
            "AWS {what}: {}: {}",
            e.code().unwrap_or("error"),
            e.message().unwrap_or("no message")
        ),
        SdkError::TimeoutError(_) => format!("AWS {what}: timed out"),
        _ => format!("AWS {what}: {}", DisplayErrorContext(e)),
    };
    ProviderError::Call(crate::redact::redact(
        &crate::domain::truncate(&text, 400),
        &[],
    ))
}

fn code_is<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>, code: &str) -> bool {
    matches!(e, SdkError::ServiceError(_)) && e.code() == Some(code)
}

/// Which of AWS's assignment requests is awaited.
#[derive(Clone, Copy)]
enum Request {
    Creation,
    Deletion,
}

impl AwsIdentityCenter {
    pub fn new(name: &str, cfg: &AwsIdentityCenterProvider, clock: Arc<dyn Clock>) -> Self {
        AwsIdentityCenter {
            name: name.to_string(),
            cfg: cfg.clone(),
            clock,
            clients: OnceCell::new(),
            sets: Mutex::new(Sets::default()),
            users: Mutex::new(HashMap::new()),
        }
    }

    async fn clients(&self) -> &Clients {
        self.clients
            .get_or_init(|| async {
                use aws_smithy_http_client::tls;
                // rustls on ring, which the rest of warrant already builds,
                // rather than the SDK's default TLS stack.
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::Rustls(
                        tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https();
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(self.cfg.region.clone()))
                    .http_client(http);
                if let Some(url) = &self.cfg.endpoint_url {
                    loader = loader.endpoint_url(url);
                }
                let shared = loader.load().await;
                Clients {
                    sso: ssoadmin::Client::new(&shared),
                    ids: identitystore::Client::new(&shared),
                }
            })
            .await
    }

    /// When a wait for AWS's request gives up: a little before the call's
    /// own deadline, so the error says what was awaited.
    fn wait_until(&self) -> Option<Instant> {
        let timeout = self.cfg.timeout.std();
        let budget = timeout.saturating_sub(timeout / 10);
        Instant::now().checked_add(budget)
    }

    /// The user id of `user_name`; `None` when the identity store has no
    /// such user.
    async fn user_id(&self, c: &Clients, user_name: &str) -> Result<Option<String>, ProviderError> {
        use identitystore::types::{AlternateIdentifier, UniqueAttribute};
        let attribute = UniqueAttribute::builder()
            .attribute_path("userName")
            .attribute_value(aws_smithy_types::Document::String(user_name.to_string()))
            .build()
            .map_err(|e| ProviderError::Call(format!("AWS GetUserId: {e}")))?;
        match c
            .ids
            .get_user_id()
            .identity_store_id(&self.cfg.identity_store_id)
            .alternate_identifier(AlternateIdentifier::UniqueAttribute(attribute))
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.user_id().to_string())),
            Err(e) if code_is(&e, "ResourceNotFoundException") => Ok(None),
            Err(e) => Err(aws_error("GetUserId", &e)),
        }
    }

    /// The user id of `user_name`, which must exist.
    async fn known_user(&self, c: &Clients, user_name: &str) -> Result<String, ProviderError> {
        self.user_id(c, user_name).await?.ok_or_else(|| {
            ProviderError::Call(format!(
                "identity store {} has no user named `{}`",
                self.cfg.identity_store_id,
                shown(user_name, 80)
            ))
        })
    }

    /// The `UserName` of user id `id`, cached; `None` when it is gone.
    async fn user_name(&self, c: &Clients, id: &str) -> Result<Option<String>, ProviderError> {
        let now = self.clock.now();
        if let Some((name, at)) = locked(&self.users).get(id) {
            if at
                .checked_add_signed(USERS_TTL)
                .is_some_and(|end| now < end)
            {
                return Ok(Some(name.clone()));
            }
        }
        let out = match c
            .ids
            .describe_user()
            .identity_store_id(&self.cfg.identity_store_id)
            .user_id(id)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if code_is(&e, "ResourceNotFoundException") => {
                locked(&self.users).remove(id);
                return Ok(None);
            }
            Err(e) => return Err(aws_error("DescribeUser", &e)),
        };
        let Some(name) = out.user_name() else {
            return Ok(None);
        };
        locked(&self.users).insert(id.to_string(), (name.to_string(), now));
        Ok(Some(name.to_string()))
    }

    /// The name of permission set `arn`, described once; `None` when the
    /// set is gone.
    async fn set_name(&self, c: &Clients, arn: &str) -> Result<Option<String>, ProviderError> {
        if let Some(name) = locked(&self.sets).names.get(arn) {
            return Ok(Some(name.clone()));
        }
        let out = match c
            .sso
            .describe_permission_set()
            .instance_arn(&self.cfg.instance_arn)
            .permission_set_arn(arn)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if code_is(&e, "ResourceNotFoundException") => return Ok(None),
            Err(e) => return Err(aws_error("DescribePermissionSet", &e)),
        };
        let Some(name) = out.permission_set().and_then(|s| s.name()) else {
            return Ok(None);
        };
        locked(&self.sets)
            .names
            .insert(arn.to_string(), name.to_string());
        Ok(Some(name.to_string()))
    }

    /// The ARN of the permission set named `name`: from the last listing
    /// while it is fresh and holds the name, else from a new listing.
    async fn set_arn(&self, c: &Clients, name: &str) -> Result<Option<String>, ProviderError> {
        let now = self.clock.now();
        {
            let sets = locked(&self.sets);
            let fresh = sets
                .listed_at
                .and_then(|at| at.checked_add_signed(SETS_TTL))
                .is_some_and(|end| now < end);
            if let (true, Some(arn)) = (fresh, sets.arns.get(name)) {
                return Ok(Some(arn.clone()));
            }
        }
        let listed: Vec<String> = c
            .sso
            .list_permission_sets()
            .instance_arn(&self.cfg.instance_arn)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| aws_error("ListPermissionSets", &e))?;
        // `set_name` keeps each name as soon as it is read, so a listing
        // cut short by the deadline is not described again from the start.
        let mut arns = HashMap::new();
        for chunk in listed.chunks(DESCRIBE_AT_ONCE) {
            let names = join_all(chunk.iter().map(|arn| self.set_name(c, arn))).await;
            for (arn, name) in chunk.iter().zip(names) {
                if let Some(name) = name? {
                    arns.insert(name, arn.clone());
                }
            }
        }
        let found = arns.get(name).cloned();
        let mut sets = locked(&self.sets);
        sets.arns = arns;
        sets.listed_at = Some(now);
        Ok(found)
    }

    /// Forgets the listing, after AWS said an ARN from it is gone.
    fn forget_listing(&self) {
        locked(&self.sets).listed_at = None;
    }

    /// The ARNs of the permission sets named `set` that user `user_id`
    /// holds in `account`: the assignments AWS has, matched by name.
    async fn held(
        &self,
        c: &Clients,
        user_id: &str,
        account: &str,
        set: &str,
    ) -> Result<Vec<String>, ProviderError> {
        let assignments: Vec<_> = c
            .sso
            .list_account_assignments_for_principal()
            .instance_arn(&self.cfg.instance_arn)
            .principal_type(PrincipalType::User)
            .principal_id(user_id)
            .filter(
                ListAccountAssignmentsFilter::builder()
                    .account_id(account)
                    .build(),
            )
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| aws_error("ListAccountAssignmentsForPrincipal", &e))?;
        let mut held = Vec::new();
        for a in assignments {
            // The filter already keeps one account; a server that ignores
            // it must not make another account's assignment count.
            if a.account_id() != Some(account) {
                continue;
            }
            let Some(arn) = a.permission_set_arn() else {
                continue;
            };
            if self.set_name(c, arn).await?.as_deref() == Some(set)
                && !held.iter().any(|h| h == arn)
            {
                held.push(arn.to_string());
            }
        }
        Ok(held)
    }

    /// Follows AWS's request until it has succeeded or failed, or until
    /// `until`.
    async fn finish(
        &self,
        c: &Clients,
        request: Request,
        status: Option<AccountAssignmentOperationStatus>,
        until: Option<Instant>,
    ) -> Result<(), ProviderError> {
        let what = match request {
            Request::Creation => "assignment creation",
            Request::Deletion => "assignment deletion",
        };
        let mut status =
            status.ok_or_else(|| ProviderError::Call(format!("AWS {what}: no request status")))?;
        let mut pause = FIRST_POLL;
        loop {
            let id = status.request_id().unwrap_or("").to_string();
            match status.status() {
                Some(StatusValues::Succeeded) => return Ok(()),
                Some(StatusValues::Failed) => {
                    return Err(ProviderError::Call(crate::redact::redact(
                        &format!(
                            "AWS {what} request {id} failed: {}",
                            status.failure_reason().unwrap_or("no reason given")
                        ),
                        &[],
                    )))
                }
                // In progress, or a state this SDK does not name: ask again.
                _ => {}
            }
            if id.is_empty() {
                return Err(ProviderError::Call(format!(
                    "AWS {what}: in progress, without a request id to follow"
                )));
            }
            let next = Instant::now().checked_add(pause);
            if let (Some(next), Some(until)) = (next, until) {
                if next >= until {
                    return Err(ProviderError::Call(format!(
                        "AWS {what} request {id} still in progress after {}",
                        crate::domain::format_duration(self.cfg.timeout.0)
                    )));
                }
            }
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2).min(LONGEST_POLL);
            status = match request {
                Request::Creation => {
                    c.sso
                        .describe_account_assignment_creation_status()
                        .instance_arn(&self.cfg.instance_arn)
                        .account_assignment_creation_request_id(&id)
                        .send()
                        .await
                        .map_err(|e| aws_error("DescribeAccountAssignmentCreationStatus", &e))?
                        .account_assignment_creation_status
                }
                Request::Deletion => {
                    c.sso
                        .describe_account_assignment_deletion_status()
                        .instance_arn(&self.cfg.instance_arn)
                        .account_assignment_deletion_request_id(&id)
                        .send()
                        .await
                        .map_err(|e| aws_error("DescribeAccountAssignmentDeletionStatus", &e))?
                        .account_assignment_deletion_status
                }
            }
            .ok_or_else(|| ProviderError::Call(format!("AWS {what}: no request status")))?;
        }
    }

    async fn grant(&self, call: &Call<'_>) -> Result<(), ProviderError> {
        let (account, set) = parse_target(call.target).map_err(|why| {
            ProviderError::Refused(format!(
                "provider `{}` refuses target `{}`: {why}",
                self.name,
                shown(call.target, 80)
            ))
        })?;
        let until = self.wait_until();
        let c = self.clients().await;
        let user = self.known_user(c, call.account).await?;
        if !self.held(c, &user, account, set).await?.is_empty() {
            return Ok(());
        }
        let arn = self.set_arn(c, set).await?.ok_or_else(|| {
            ProviderError::Call(format!(
                "Identity Center instance {} has no permission set named `{set}`",
                self.cfg.instance_arn
            ))
        })?;
        let sent = c
            .sso
            .create_account_assignment()
            .instance_arn(&self.cfg.instance_arn)
            .target_id(account)
            .target_type(TargetType::AwsAccount)
            .permission_set_arn(&arn)
            .principal_type(PrincipalType::User)
            .principal_id(&user)
            .send()
            .await;
        let status = match sent {
            Ok(out) => out.account_assignment_creation_status,
            Err(e) if code_is(&e, "ConflictException") => {
                // Another request on this assignment: done if it landed.
                if !self.held(c, &user, account, set).await?.is_empty() {
                    return Ok(());
                }
                return Err(aws_error("CreateAccountAssignment", &e));
            }
            Err(e) => {
                if code_is(&e, "ResourceNotFoundException") {
                    // Perhaps the set was deleted since it was listed.
                    self.forget_listing();
                }
                return Err(aws_error("CreateAccountAssignment", &e));
            }
        };
        self.finish(c, Request::Creation, status, until).await
    }

    async fn revoke(&self, call: &Call<'_>) -> Result<(), ProviderError> {
        // A target outside AWS's syntax names no assignment AWS could hold.
        let Ok((account, set)) = parse_target(call.target) else {
            tracing::warn!(
                provider = %self.name,
                "revoke of a target no AWS assignment can have: nothing to remove"
            );
            return Ok(());
        };
        let until = self.wait_until();
        let c = self.clients().await;
        let Some(user) = self.user_id(c, call.account).await? else {
            return Ok(());
        };
        for arn in self.held(c, &user, account, set).await? {
            let sent = c
                .sso
                .delete_account_assignment()
                .instance_arn(&self.cfg.instance_arn)
                .target_id(account)
                .target_type(TargetType::AwsAccount)
                .permission_set_arn(&arn)
                .principal_type(PrincipalType::User)
                .principal_id(&user)
                .send()
                .await;
            let status = match sent {
                Ok(out) => out.account_assignment_deletion_status,
                Err(e) if code_is(&e, "ResourceNotFoundException") => continue,
                Err(e) if code_is(&e, "ConflictException") => {
                    if !self.held(c, &user, account, set).await?.contains(&arn) {
                        continue;
                    }
                    return Err(aws_error("DeleteAccountAssignment", &e));
                }
                Err(e) => return Err(aws_error("DeleteAccountAssignment", &e)),
            };
            self.finish(c, Request::Deletion, status, until).await?;
        }
        Ok(())
    }

    async fn list_holders(&self, target: &str) -> Result<Vec<String>, ProviderError> {
        let Ok((account, set)) = parse_target(target) else {
            return Ok(Vec::new());
        };
        let c = self.clients().await;
        let Some(arn) = self.set_arn(c, set).await? else {
            return Ok(Vec::new());
        };
        let listed = c
            .sso
            .list_account_assignments()
            .instance_arn(&self.cfg.instance_arn)
            .account_id(account)
            .permission_set_arn(&arn)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await;
        let assignments = match listed {
            Ok(all) => all,
            Err(e) => {
                if code_is(&e, "ResourceNotFoundException") {
                    self.forget_listing();
                }
                return Err(aws_error("ListAccountAssignments", &e));
            }
        };
        let mut holders = Vec::new();
        for a in assignments {
            if a.principal_type() != Some(&PrincipalType::User) {
                continue;
            }
            let Some(id) = a.principal_id() else {
                continue;
            };
            match self.user_name(c, id).await? {
                Some(name) if !holders.contains(&name) => holders.push(name),
                Some(_) => {}
                None => tracing::warn!(
                    provider = %self.name,
                    "an assignment names a user the identity store no longer has; left out"
                ),
            }
        }
        Ok(holders)
    }

    async fn holds_one(&self, target: &str, account_name: &str) -> Result<bool, ProviderError> {
        let Ok((account, set)) = parse_target(target) else {
            return Ok(false);
        };
        let c = self.clients().await;
        let Some(user) = self.user_id(c, account_name).await? else {
            return Ok(false);
        };
        Ok(!self.held(c, &user, account, set).await?.is_empty())
    }
}

impl Provider for AwsIdentityCenter {
    fn apply<'a>(&'a self, c: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.grant(c))
    }

    fn remove<'a>(&'a self, c: &'a Call<'a>) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.revoke(c))
    }

    /// The `UserName`s assigned the target's permission set in its account.
    fn holders<'a>(
        &'a self,
        target: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, ProviderError>> {
        Box::pin(async move { self.list_holders(target).await.map(Some) })
    }

    /// One user's assignments in the account, rather than everyone's.
    fn holds<'a>(
        &'a self,
        target: &'a str,
        account: &'a str,
    ) -> BoxFuture<'a, Result<Option<bool>, ProviderError>> {
        Box::pin(async move { self.holds_one(target, account).await.map(Some) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_an_account_and_a_permission_set() {
        assert_eq!(
            parse_target("123456789012/ReadOnly").unwrap(),
            ("123456789012", "ReadOnly")
        );
        for ok in [
            "123456789012/a",
            "000000000000/Admin_Access+x=y,z.w@v-u",
            &format!("123456789012/{}", "p".repeat(32)),
        ] {
            assert!(parse_target(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ReadOnly",
            "123456789012",
            "123456789012/",
            "12345678901/ReadOnly",
            "1234567890123/ReadOnly",
            "12345678901a/ReadOnly",
            "123456789012/Read Only",
            "123456789012/Read/Only",
            "123456789012/Read:Only",
            "123456789012/R\u{e9}ad",
            &format!("123456789012/{}", "p".repeat(33)),
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn section_values_follow_aws() {
        assert!(check_instance_arn("arn:aws:sso:::instance/ssoins-1234567890abcdef").is_ok());
        assert!(check_instance_arn("arn:aws-us-gov:sso:::instance/ins-abcdefghijklmnop").is_ok());
        for bad in [
            "ssoins-1234567890abcdef",
            "arn:aws:sso:::instance/ssoins-123",
            "arn:aws:iam:::instance/ssoins-1234567890abcdef",
            "arn:aws:sso:eu-west-1::instance/ssoins-1234567890abcdef",
            "arn:AWS:sso:::instance/ssoins-1234567890abcdef",
        ] {
            assert!(check_instance_arn(bad).is_err(), "{bad}");
        }
        assert!(check_identity_store_id("d-1234567890").is_ok());
        assert!(check_identity_store_id("0123abcd-0123-4567-89ab-0123456789ab").is_ok());
        for bad in [
            "",
            "d-123",
            "D-1234567890",
            "arn:aws:identitystore::1:identitystore/d-1234567890",
        ] {
            assert!(check_identity_store_id(bad).is_err(), "{bad}");
        }
        assert!(check_region("eu-west-1").is_ok());
        assert!(check_region("").is_err() && check_region("EU west").is_err());
        assert!(check_endpoint("http://127.0.0.1:5000").is_ok());
        assert!(check_endpoint("https://sso.eu-west-1.amazonaws.com").is_ok());
        for bad in ["ftp://x", "127.0.0.1:5000", "https://key:secret@x.example"] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }
}
