//! ACLs from the contract: the least each client of `topics.yaml` needs
//! (read its inputs and its own group, write its outputs and the dead-letter
//! topics of its inputs, its relay's transactional ids when the relay is
//! transactional), listed by [`plan`] and created with the Admin API by
//! [`apply`], which reports ACLs of the same principals that the plan does
//! not hold as drift and never deletes them. And what a running processor
//! asks the broker about itself: [`missing_access`] names the first topic
//! (or its group) its principal may not use as the contract says.
//!
//! rdkafka 0.39 wraps none of librdkafka's ACL calls; they are called here
//! through its bindings, each on a queue of its own, blocking (call them
//! off the async workers).

use crate::admin_ffi::{admin_call, c_text, text};
use crate::topics::{ClientSpec, TopicsFile};
use rdkafka::admin::AdminClient;
use rdkafka::bindings as rd;
use rdkafka::client::DefaultClientContext;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fmt;
use std::os::raw::c_char;
use std::time::Duration;

/// What an ACL is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// A topic.
    Topic,
    /// A consumer group.
    Group,
    /// A transactional id.
    TransactionalId,
}

/// How the resource name matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pattern {
    /// Exactly this name.
    Literal,
    /// Every name that starts with it.
    Prefixed,
}

/// An operation an ACL allows. READ and WRITE imply DESCRIBE in Kafka, and
/// topic WRITE lets a producer be idempotent (no cluster ACL needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// Consume, fetch offsets, join the group.
    Read,
    /// Produce; use the transactional id.
    Write,
    /// See that it exists.
    Describe,
    /// Anything else the broker reports (kept to show it as drift).
    Other(u32),
}

/// One ALLOW ACL from any host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Acl {
    /// `User:<name>`.
    pub principal: String,
    /// What it is about.
    pub resource: Resource,
    /// Pattern type.
    pub pattern: Pattern,
    /// The resource's name (topic names with their prefix).
    pub name: String,
    /// What it allows.
    pub operation: Operation,
}

impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let resource = match self.resource {
            Resource::Topic => "topic",
            Resource::Group => "group",
            Resource::TransactionalId => "transactional-id",
        };
        let pattern = match self.pattern {
            Pattern::Literal => "",
            Pattern::Prefixed => "*",
        };
        let operation = match self.operation {
            Operation::Read => "READ".to_string(),
            Operation::Write => "WRITE".to_string(),
            Operation::Describe => "DESCRIBE".to_string(),
            Operation::Other(code) => operation_name(code),
        };
        write!(
            f,
            "{} ALLOW {operation} {resource} {}{pattern}",
            self.principal, self.name
        )
    }
}

/// What the plan is for: the environment's names.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Prefix of every physical topic name (`TOPIC_PREFIX`).
    pub topic_prefix: String,
    /// Prefix of every processor's consumer group: the group of processor
    /// `p` is `<group_prefix>p` (`CONSUMER_GROUP`'s default is
    /// `psymatch-<processor>`).
    pub group_prefix: String,
    /// Whether the relays run with `RELAY=transactional` (they then need
    /// their transactional ids).
    pub transactional_relay: bool,
    /// Principals by client name where they are not `User:<name>` (a
    /// certificate's CN, a managed service's user names).
    pub principals: BTreeMap<String, String>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            topic_prefix: String::new(),
            group_prefix: "psymatch-".into(),
            transactional_relay: false,
            principals: BTreeMap::new(),
        }
    }
}

impl PlanOptions {
    /// The principal of client `name`.
    pub fn principal(&self, name: &str) -> String {
        self.principals
            .get(name)
            .cloned()
            .unwrap_or_else(|| format!("User:{name}"))
    }
}

/// The least set of ACLs every client of `file` needs, sorted, without
/// repeats. `file` is the declaration without prefix.
pub fn plan(file: &TopicsFile, options: &PlanOptions) -> Vec<Acl> {
    let mut acls = BTreeSet::new();
    for (name, client) in file.clients.iter().filter(|(_, c)| c.acls) {
        acls.extend(client_plan(file, name, client, options));
    }
    acls.into_iter().collect()
}

/// The ACLs of one client.
fn client_plan(
    file: &TopicsFile,
    name: &str,
    client: &ClientSpec,
    options: &PlanOptions,
) -> Vec<Acl> {
    let principal = options.principal(name);
    let acl = |resource, pattern, name: String, operation| Acl {
        principal: principal.clone(),
        resource,
        pattern,
        name,
        operation,
    };
    let topic = |t: &str| format!("{}{t}", options.topic_prefix);
    let mut acls = Vec::new();
    for read in &client.reads {
        acls.push(acl(
            Resource::Topic,
            Pattern::Literal,
            topic(read),
            Operation::Read,
        ));
    }
    for write in client.all_writes(file) {
        acls.push(acl(
            Resource::Topic,
            Pattern::Literal,
            topic(write),
            Operation::Write,
        ));
    }
    if !client.tool {
        if !client.reads.is_empty() {
            acls.push(acl(
                Resource::Group,
                Pattern::Literal,
                format!("{}{name}", options.group_prefix),
                Operation::Read,
            ));
        }
        if options.transactional_relay {
            // The relay's ids are psymatch-relay-<schema>-<group> (a
            // processor's schema is its name): one per group.
            acls.push(acl(
                Resource::TransactionalId,
                Pattern::Prefixed,
                format!("psymatch-relay-{name}-"),
                Operation::Write,
            ));
        }
    }
    acls
}

/// What [`apply`] found and did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Planned and created now.
    pub created: Vec<Acl>,
    /// Planned and already there.
    pub present: Vec<Acl>,
    /// There for a planned principal on a planned resource kind, but not
    /// planned: reported for a person to decide, never deleted.
    pub drift: Vec<Acl>,
    /// Planned and refused by the broker, with its reason.
    pub refused: Vec<(Acl, String)>,
}

/// A connection for ACL administration (a principal allowed to alter and
/// describe the cluster's ACLs, e.g. the cluster's super user).
pub struct AclAdmin {
    client: AdminClient<DefaultClientContext>,
    timeout: Duration,
}

impl AclAdmin {
    /// Connects to `brokers` with the settings registered for them.
    pub fn connect(brokers: &str) -> anyhow::Result<AclAdmin> {
        Ok(AclAdmin {
            client: crate::broker::client(brokers)
                .set("client.id", "psymatch-acls")
                .create()?,
            timeout: Duration::from_secs(15),
        })
    }

    /// Every ALLOW ACL of `principal` (blocking).
    pub fn describe(&self, principal: &str) -> Result<Vec<Acl>, String> {
        let principal = c_text(principal)?;
        let mut errstr = [0 as c_char; 256];
        // SAFETY: the filter is created, passed and destroyed here; the
        // bindings in the result are read before the event is destroyed.
        unsafe {
            let filter = rd::rd_kafka_AclBindingFilter_new(
                rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_ANY,
                std::ptr::null(),
                rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_ANY,
                principal.as_ptr(),
                std::ptr::null(),
                rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_ANY,
                rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
                errstr.as_mut_ptr(),
                errstr.len(),
            );
            if filter.is_null() {
                return Err(text(errstr.as_ptr()));
            }
            let outcome = self.call(
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBEACLS,
                |rk, options, queue| rd::rd_kafka_DescribeAcls(rk, filter, options, queue),
                |event| {
                    let result = rd::rd_kafka_event_DescribeAcls_result(event);
                    let mut count = 0usize;
                    let bindings = rd::rd_kafka_DescribeAcls_result_acls(result, &mut count);
                    Ok((0..count)
                        .filter_map(|i| acl_of(*bindings.add(i)))
                        .collect())
                },
            );
            rd::rd_kafka_AclBinding_destroy(filter);
            outcome
        }
    }

    /// Creates `acls`; the broker's answer for each (blocking).
    pub fn create(&self, acls: &[Acl]) -> Result<Vec<Result<(), String>>, String> {
        if acls.is_empty() {
            return Ok(Vec::new());
        }
        let mut errstr = [0 as c_char; 256];
        let mut bindings = Vec::with_capacity(acls.len());
        // SAFETY: every binding is created here and destroyed below, after
        // the call that borrows the array; results are read before the
        // event is destroyed.
        unsafe {
            for acl in acls {
                let name = c_text(&acl.name)?;
                let principal = c_text(&acl.principal)?;
                let binding = rd::rd_kafka_AclBinding_new(
                    resource_type(acl.resource),
                    name.as_ptr(),
                    pattern_type(acl.pattern),
                    principal.as_ptr(),
                    c"*".as_ptr(),
                    operation_code(acl.operation),
                    rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
                    errstr.as_mut_ptr(),
                    errstr.len(),
                );
                if binding.is_null() {
                    bindings
                        .drain(..)
                        .for_each(|b| rd::rd_kafka_AclBinding_destroy(b));
                    return Err(format!("{acl}: {}", text(errstr.as_ptr())));
                }
                bindings.push(binding);
            }
            let outcome = self.call(
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_CREATEACLS,
                |rk, options, queue| {
                    rd::rd_kafka_CreateAcls(
                        rk,
                        bindings.as_mut_ptr(),
                        bindings.len(),
                        options,
                        queue,
                    )
                },
                |event| {
                    let result = rd::rd_kafka_event_CreateAcls_result(event);
                    let mut count = 0usize;
                    let results = rd::rd_kafka_CreateAcls_result_acls(result, &mut count);
                    Ok((0..count)
                        .map(|i| {
                            let error = rd::rd_kafka_acl_result_error(*results.add(i));
                            if error.is_null() {
                                Ok(())
                            } else {
                                Err(text(rd::rd_kafka_error_string(error)))
                            }
                        })
                        .collect())
                },
            );
            for binding in bindings {
                rd::rd_kafka_AclBinding_destroy(binding);
            }
            outcome
        }
    }

    /// Runs one admin request on a queue of its own and reads its event.
    ///
    /// # Safety
    /// `request` must enqueue exactly one request of `op` on the queue it
    /// is given; `read` may use the event only until it returns.
    unsafe fn call<T>(
        &self,
        op: rd::rd_kafka_admin_op_t,
        request: impl FnOnce(
            *mut rd::rd_kafka_t,
            *const rd::rd_kafka_AdminOptions_t,
            *mut rd::rd_kafka_queue_t,
        ),
        read: impl FnOnce(*mut rd::rd_kafka_event_t) -> Result<T, String>,
    ) -> Result<T, String> {
        // SAFETY: the client lives as long as self; the caller keeps the
        // rest of the contract.
        unsafe {
            admin_call(
                self.client.inner().native_ptr(),
                self.timeout,
                op,
                request,
                read,
            )
        }
    }
}

/// Plans against what the broker holds and creates what is missing
/// (nothing when `dry_run`); blocking. Drift is judged within `options`'
/// names (topics under its topic prefix, groups under its group prefix,
/// the relays' transactional ids): another environment sharing the
/// cluster under another prefix is not this plan's business.
pub fn apply(
    admin: &AclAdmin,
    planned: &[Acl],
    options: &PlanOptions,
    dry_run: bool,
) -> Result<Applied, String> {
    let principals: BTreeSet<&str> = planned.iter().map(|a| a.principal.as_str()).collect();
    let mut existing = BTreeSet::new();
    for principal in &principals {
        existing.extend(admin.describe(principal)?);
    }
    let wanted: BTreeSet<&Acl> = planned.iter().collect();
    let ours = |acl: &Acl| match acl.resource {
        Resource::Topic => acl.name.starts_with(&options.topic_prefix),
        Resource::Group => acl.name.starts_with(&options.group_prefix),
        Resource::TransactionalId => acl.name.starts_with("psymatch-relay-"),
    };
    let mut applied = Applied {
        drift: existing
            .iter()
            .filter(|acl| !wanted.contains(acl) && ours(acl))
            .cloned()
            .collect(),
        ..Applied::default()
    };
    let (present, missing): (Vec<&Acl>, Vec<&Acl>) =
        planned.iter().partition(|acl| existing.contains(*acl));
    applied.present = present.into_iter().cloned().collect();
    let missing: Vec<Acl> = missing.into_iter().cloned().collect();
    if dry_run {
        applied.created = missing;
        return Ok(applied);
    }
    for (acl, result) in missing.iter().zip(admin.create(&missing)?) {
        match result {
            Ok(()) => applied.created.push(acl.clone()),
            Err(reason) => applied.refused.push((acl.clone(), reason)),
        }
    }
    Ok(applied)
}

/// What the running client `name` may not do that the contract says it
/// does, in one line naming the topic, the operation, the principal and
/// what to do; `None` when it may do everything. Asks the broker which
/// operations the principal holds on each topic (DescribeTopics with
/// authorized operations; a broker without an authorizer allows all).
/// Blocking.
pub fn missing_access(
    brokers: &str,
    file: &TopicsFile,
    name: &str,
    topic_prefix: &str,
    group: &str,
) -> Result<Option<String>, String> {
    let Some(client) = file.client(name) else {
        return Ok(None);
    };
    let mut needs: BTreeMap<String, BTreeSet<Operation>> = BTreeMap::new();
    for read in &client.reads {
        needs
            .entry(format!("{topic_prefix}{read}"))
            .or_default()
            .insert(Operation::Read);
    }
    for write in client.all_writes(file) {
        needs
            .entry(format!("{topic_prefix}{write}"))
            .or_default()
            .insert(Operation::Write);
    }
    let admin: AdminClient<DefaultClientContext> = crate::broker::client(brokers)
        .set("client.id", format!("psymatch-{name}-access"))
        .set("log_level", "0")
        .create()
        .map_err(|e| e.to_string())?;
    let held = authorized_operations(&admin, needs.keys())?;
    let settings = crate::broker::settings(brokers);
    let principal = settings.who();
    for (topic, operations) in &needs {
        let Some(allowed) = held.get(topic) else {
            continue;
        };
        match allowed {
            Err(code) => {
                return Ok(Some(format!(
                    "topic {topic}: {code} for principal {principal}: run psymatch acls apply"
                )));
            }
            Ok(allowed) => {
                if let Some(operation) = operations.iter().find(|o| !allowed.contains(o)) {
                    let operation = match operation {
                        Operation::Read => "READ",
                        _ => "WRITE",
                    };
                    return Ok(Some(format!(
                        "topic {topic}: {operation} not allowed for principal {principal}: run psymatch acls apply"
                    )));
                }
            }
        }
    }
    // Its consumer group (DescribeConsumerGroups needs the group's
    // DESCRIBE, which its READ grants, as joining needs).
    if !client.tool
        && !client.reads.is_empty()
        && let Some(code) = group_refusal(&admin, group)?
    {
        return Ok(Some(format!(
            "group {group}: {code} for principal {principal}: run psymatch acls apply"
        )));
    }
    Ok(None)
}

/// The broker's refusal to describe `group` to the client's principal
/// (`GROUP_AUTHORIZATION_FAILED`), if it refuses.
fn group_refusal(
    client: &AdminClient<DefaultClientContext>,
    group: &str,
) -> Result<Option<String>, String> {
    let name = c_text(group)?;
    let mut names = [name.as_ptr()];
    // SAFETY: the name outlives the call; descriptions are read before
    // the event is destroyed.
    unsafe {
        admin_call(
            client.inner().native_ptr(),
            Duration::from_secs(5),
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS,
            |rk, options, queue| {
                rd::rd_kafka_DescribeConsumerGroups(rk, names.as_mut_ptr(), 1, options, queue)
            },
            |event| {
                let result = rd::rd_kafka_event_DescribeConsumerGroups_result(event);
                let mut count = 0usize;
                let groups = rd::rd_kafka_DescribeConsumerGroups_result_groups(result, &mut count);
                Ok((0..count).find_map(|i| {
                    let error = rd::rd_kafka_ConsumerGroupDescription_error(*groups.add(i));
                    (!error.is_null()
                        && rd::rd_kafka_error_code(error)
                            == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED)
                        .then(|| text(rd::rd_kafka_error_name(error)))
                }))
            },
        )
    }
}

/// A readiness probe named `access`: red with [`missing_access`]'s line
/// while the principal lacks what the contract says `name` does. The
/// verdict is logged once each time it changes (one line for a refusal,
/// not one per probe), and a granted verdict is trusted for 30 s, so
/// frequent probes do not each ask the broker.
pub fn access_probe(
    brokers: String,
    name: &'static str,
    topic_prefix: String,
    group: String,
) -> crate::surface::Probe {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    let last: Arc<Mutex<(Option<Instant>, Option<String>)>> = Arc::new(Mutex::new((None, None)));
    Box::new(move || {
        let (brokers, prefix, last) = (brokers.clone(), topic_prefix.clone(), last.clone());
        let group = group.clone();
        Box::pin(async move {
            if let (Some(at), None) = &*last.lock().expect("access lock")
                && at.elapsed() < Duration::from_secs(30)
            {
                return Ok(());
            }
            let file = &crate::contracts::Contracts::embedded().topics;
            let verdict = tokio::task::spawn_blocking(move || {
                missing_access(&brokers, file, name, &prefix, &group)
            })
            .await
            .map_err(|e| e.to_string())?;
            // A broker that cannot be asked is the broker probe's to report.
            let refusal = match verdict {
                Ok(refusal) => refusal,
                Err(_) => return Ok(()),
            };
            let mut last = last.lock().expect("access lock");
            if last.1 != refusal {
                match &refusal {
                    Some(line) => tracing::error!(processor = name, "{line}"),
                    None if last.1.is_some() => {
                        tracing::info!(processor = name, "access granted as topics.yaml says")
                    }
                    None => {}
                }
            }
            *last = (Some(Instant::now()), refusal.clone());
            refusal.map_or(Ok(()), Err)
        })
    })
}

/// The operations the client's principal holds on each topic, or the
/// broker's error code for it (`TOPIC_AUTHORIZATION_FAILED` when it may
/// not even see the topic; `UNKNOWN_TOPIC_OR_PART` is left out: a topic
/// that does not exist is the topics check's to report).
fn authorized_operations<'a>(
    client: &AdminClient<DefaultClientContext>,
    topics: impl Iterator<Item = &'a String>,
) -> Result<BTreeMap<String, Result<BTreeSet<Operation>, String>>, String> {
    let names: Vec<CString> = topics.map(|t| c_text(t)).collect::<Result<_, _>>()?;
    let mut pointers: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
    // SAFETY: the collection is created and destroyed here; descriptions
    // are read before the event is destroyed.
    unsafe {
        let collection =
            rd::rd_kafka_TopicCollection_of_topic_names(pointers.as_mut_ptr(), pointers.len());
        let outcome = admin_call(
            client.inner().native_ptr(),
            Duration::from_secs(5),
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            |rk, options, queue| rd::rd_kafka_DescribeTopics(rk, collection, options, queue),
            |event| {
                let result = rd::rd_kafka_event_DescribeTopics_result(event);
                let mut count = 0usize;
                let descriptions = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
                let mut held = BTreeMap::new();
                for i in 0..count {
                    let description = *descriptions.add(i);
                    let name = text(rd::rd_kafka_TopicDescription_name(description));
                    let error = rd::rd_kafka_TopicDescription_error(description);
                    let code = if error.is_null() {
                        rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                    } else {
                        rd::rd_kafka_error_code(error)
                    };
                    if code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART {
                        continue;
                    }
                    if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                        held.insert(name, Err(text(rd::rd_kafka_error_name(error))));
                        continue;
                    }
                    let mut n = 0usize;
                    let operations =
                        rd::rd_kafka_TopicDescription_authorized_operations(description, &mut n);
                    let set = (0..n)
                        .map(|j| operation_of(*operations.add(j)))
                        .collect::<BTreeSet<_>>();
                    held.insert(name, Ok(with_implied(set)));
                }
                Ok(held)
            },
        );
        rd::rd_kafka_TopicCollection_destroy(collection);
        outcome
    }
}

/// ALL implies every operation; the broker lists what it grants.
fn with_implied(mut set: BTreeSet<Operation>) -> BTreeSet<Operation> {
    if set.contains(&Operation::Other(
        rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_ALL as u32,
    )) {
        set.extend([Operation::Read, Operation::Write, Operation::Describe]);
    }
    set
}

fn resource_type(resource: Resource) -> rd::rd_kafka_ResourceType_t {
    match resource {
        Resource::Topic => rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
        Resource::Group => rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_GROUP,
        Resource::TransactionalId => {
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TRANSACTIONAL_ID
        }
    }
}

fn pattern_type(pattern: Pattern) -> rd::rd_kafka_ResourcePatternType_t {
    match pattern {
        Pattern::Literal => rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
        Pattern::Prefixed => rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_PREFIXED,
    }
}

fn operation_code(operation: Operation) -> rd::rd_kafka_AclOperation_t {
    use rd::rd_kafka_AclOperation_t as Op;
    match operation {
        Operation::Read => Op::RD_KAFKA_ACL_OPERATION_READ,
        Operation::Write => Op::RD_KAFKA_ACL_OPERATION_WRITE,
        Operation::Describe => Op::RD_KAFKA_ACL_OPERATION_DESCRIBE,
        // Never planned: the plan names only the three above.
        Operation::Other(_) => Op::RD_KAFKA_ACL_OPERATION_UNKNOWN,
    }
}

fn operation_of(code: rd::rd_kafka_AclOperation_t) -> Operation {
    use rd::rd_kafka_AclOperation_t as Op;
    match code {
        Op::RD_KAFKA_ACL_OPERATION_READ => Operation::Read,
        Op::RD_KAFKA_ACL_OPERATION_WRITE => Operation::Write,
        Op::RD_KAFKA_ACL_OPERATION_DESCRIBE => Operation::Describe,
        other => Operation::Other(other as u32),
    }
}

fn operation_name(code: u32) -> String {
    use rd::rd_kafka_AclOperation_t as Op;
    let known = [
        Op::RD_KAFKA_ACL_OPERATION_ALL,
        Op::RD_KAFKA_ACL_OPERATION_CREATE,
        Op::RD_KAFKA_ACL_OPERATION_DELETE,
        Op::RD_KAFKA_ACL_OPERATION_ALTER,
        Op::RD_KAFKA_ACL_OPERATION_CLUSTER_ACTION,
        Op::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS,
        Op::RD_KAFKA_ACL_OPERATION_ALTER_CONFIGS,
        Op::RD_KAFKA_ACL_OPERATION_IDEMPOTENT_WRITE,
    ];
    known
        .into_iter()
        .find(|op| *op as u32 == code)
        // SAFETY: librdkafka's static operation names.
        .map(|op| text(unsafe { rd::rd_kafka_AclOperation_name(op) }).to_uppercase())
        .unwrap_or_else(|| format!("OPERATION_{code}"))
}

/// A binding the broker reported, as an [`Acl`] (ALLOW from any host; a
/// resource kind psymatch never plans is left out).
///
/// # Safety
/// `binding` must point to a live binding.
unsafe fn acl_of(binding: *const rd::rd_kafka_AclBinding_t) -> Option<Acl> {
    // SAFETY: the caller holds the binding alive.
    unsafe {
        let resource = match rd::rd_kafka_AclBinding_restype(binding) {
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC => Resource::Topic,
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_GROUP => Resource::Group,
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TRANSACTIONAL_ID => {
                Resource::TransactionalId
            }
            _ => return None,
        };
        let pattern = match rd::rd_kafka_AclBinding_resource_pattern_type(binding) {
            rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_PREFIXED => {
                Pattern::Prefixed
            }
            _ => Pattern::Literal,
        };
        Some(Acl {
            principal: text(rd::rd_kafka_AclBinding_principal(binding)),
            resource,
            pattern,
            name: text(rd::rd_kafka_AclBinding_name(binding)),
            operation: operation_of(rd::rd_kafka_AclBinding_operation(binding)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract() -> TopicsFile {
        crate::contracts::Contracts::embedded().topics.clone()
    }

    fn lines(acls: &[Acl]) -> Vec<String> {
        acls.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_matcher_reads_no_patient_commands_and_intake_writes_no_matching_events() {
        let acls = plan(&contract(), &PlanOptions::default());
        let text = lines(&acls);
        assert!(text.contains(&"User:intake ALLOW READ topic patient-commands".to_string()));
        assert!(
            !text
                .iter()
                .any(|l| l.starts_with("User:matcher") && l.ends_with("topic patient-commands"))
        );
        assert!(
            !text
                .iter()
                .any(|l| l.starts_with("User:intake") && l.ends_with("topic matching-events"))
        );
        // Its own group and the dead letters of its inputs, nothing else.
        assert!(text.contains(&"User:matcher ALLOW READ group psymatch-matcher".to_string()));
        assert!(text.contains(&"User:matcher ALLOW WRITE topic patient-events.dlq".to_string()));
        assert!(
            !text
                .iter()
                .any(|l| l.starts_with("User:matcher") && l.contains("patient-commands"))
        );
        // The example gets nothing; tools no group.
        assert!(!text.iter().any(|l| l.starts_with("User:example")));
        assert!(
            !text
                .iter()
                .any(|l| l.starts_with("User:operator") && l.contains(" group "))
        );
        assert!(!text.iter().any(|l| l.contains("transactional-id")));
    }

    #[test]
    fn prefixes_principals_and_the_transactional_relay_are_the_environment_s() {
        let options = PlanOptions {
            topic_prefix: "t1.".into(),
            group_prefix: "t1.".into(),
            transactional_relay: true,
            principals: [("matcher".to_string(), "User:CN=matcher".to_string())].into(),
        };
        let text = lines(&plan(&contract(), &options));
        assert!(text.contains(&"User:CN=matcher ALLOW READ group t1.matcher".to_string()));
        assert!(text.contains(&"User:CN=matcher ALLOW READ topic t1.patient-events".to_string()));
        assert!(text.contains(
            &"User:scheduler ALLOW WRITE transactional-id psymatch-relay-scheduler-*".to_string()
        ));
        assert!(
            text.iter()
                .all(|l| !l.contains(" topic ") || l.contains(" topic t1."))
        );
    }
}
