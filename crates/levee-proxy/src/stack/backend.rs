//! Which backend takes the request, and whether its priority may.
//!
//! [`ChooseBackend`]: the route's own backend while it has a usable node;
//! else what `when_all_down` says (fail, failover, try every node). A pool
//! returning after an outage ramps its admitted concurrency on observed
//! health ([`levee_resilience::AdaptiveLimit`]): what its limit does not
//! admit yet goes to the failover backend if there is one, else waits in
//! its bulkhead's queue.
//! A failover backend takes failed-over normal and sheddable requests within
//! their shedding share of its failover budget (`failover_max_share` of its
//! limit); past it they are shed at once, never queued on it.
//! [`Shed`]: `sheddable` requests are refused while the chosen backend's
//! bulkhead is past their share of its current limit, and `normal` ones too
//! while the backend is in trouble (a node out, slow or failing, or its
//! limit held back by latency), so `critical` ones keep a slot; on a
//! healthy backend normal requests wait in its queue instead.
//! A share is checked and its slot taken in one atomic step
//! ([`levee_resilience::Bulkhead::try_acquire_below`]), so concurrent
//! requests cannot all pass it: the slot travels in
//! [`Routed::backend_slot`] and the backend's bulkhead layer takes no other.

use levee_config::{Priority, WhenAllDown};
use levee_resilience::BulkheadPermit;
use levee_telemetry::{BackendEvent, ErrorReason};
use tracing::debug;

use super::{Decision, Routed};
use crate::error::ProxyError;
use crate::upstream::Backend;

/// Sets [`Routed::backend`] and [`Routed::ignore_state`], and
/// [`Routed::backend_slot`] for a request admitted within a failover budget.
#[derive(Debug, Clone, Copy)]
pub struct ChooseBackend;

impl Decision for ChooseBackend {
    fn decide(&self, req: &mut Routed) -> Result<(), ProxyError> {
        let chosen = choose(req)?;
        req.backend = chosen.backend;
        req.ignore_state = chosen.ignore_state;
        req.backend_slot = chosen.slot;
        Ok(())
    }
}

/// Where a request goes.
struct Chosen {
    /// Index in `state.backends`.
    backend: usize,
    ignore_state: bool,
    /// A slot of that backend already taken (within its failover budget).
    slot: Option<BulkheadPermit>,
}

impl Chosen {
    fn to(backend: usize, ignore_state: bool) -> Self {
        Self {
            backend,
            ignore_state,
            slot: None,
        }
    }
}

/// The backend for the request and whether to ignore node state.
fn choose(req: &Routed) -> Result<Chosen, ProxyError> {
    let primary = req.backend();
    let class = req.class;
    let failover = || {
        primary.failover.and_then(|i| {
            let fb = req.state.backends.get(i)?;
            fb.nodes.any_usable(class).then_some((i, fb))
        })
    };
    if primary.nodes.any_usable(class) {
        // Back after an outage, the pool's ramp starts from its floor.
        primary.nodes.resume();
        let admission = primary.admission();
        // A pool ramping back takes what its limit admits (shared by the
        // nodes back so far); the rest goes to the failover pool if there is
        // one, else waits in its queue.
        if admission.is_ramping() {
            primary.apply_limit();
            let bulkhead = primary.bulkhead();
            if bulkhead.in_flight() >= bulkhead.max_in_flight() {
                if let Some((i, fb)) = failover() {
                    return fail_over(req, i, fb);
                }
            }
        }
        return Ok(Chosen::to(req.backend, false));
    }
    if primary.nodes.all_out() {
        // Its next request after a return starts the ramp.
        primary.admission().mark_out();
    }
    match primary.when_all_down {
        WhenAllDown::Fail => {
            primary.stats.count(BackendEvent::AllDownFail);
            Err(no_healthy_node(primary))
        }
        WhenAllDown::Failover => match failover() {
            Some((i, fb)) => fail_over(req, i, fb),
            None => {
                primary.stats.count(BackendEvent::AllDownFail);
                Err(no_healthy_node(primary))
            }
        },
        WhenAllDown::TryAll => {
            primary.stats.count(BackendEvent::AllDownTryAll);
            Ok(Chosen::to(req.backend, true))
        }
    }
}

/// Sends the request on to failover backend `fb` (index `i`) if it fits
/// that backend's failover budget; past it, sheds it at once.
fn fail_over(req: &Routed, i: usize, fb: &Backend) -> Result<Chosen, ProxyError> {
    let slot = fail_over_to(req.backend(), req.route().priority, fb)?;
    Ok(Chosen {
        backend: i,
        ignore_state: false,
        slot,
    })
}

/// Lets a request of `priority` fail over from backend `from` to `fb` if it
/// fits `fb`'s failover budget, with the slot it took there (none for a
/// critical one), counted as failed over on `from`; past the budget, sheds
/// it at once (counted on `fb`).
pub(super) fn fail_over_to(
    from: &Backend,
    priority: Priority,
    fb: &Backend,
) -> Result<Option<BulkheadPermit>, ProxyError> {
    let Ok(slot) = take_within_failover_budget(fb, priority) else {
        fb.stats.count(BackendEvent::Shed);
        debug!(
            backend = %fb.name,
            from = %from.name,
            priority = %priority,
            in_flight = fb.bulkhead().in_flight(),
            failover_budget = fb.failover_budget(),
            "shed: the failover backend is past this priority's part of its failover budget"
        );
        return Err(ProxyError::new(
            ErrorReason::Shed,
            format!(
                "failover backend {} sheds {} requests at {} in flight (failover budget {})",
                fb.name,
                priority,
                fb.bulkhead().in_flight(),
                fb.failover_budget()
            ),
        ));
    };
    from.stats.count(BackendEvent::FailedOver);
    Ok(slot)
}

/// A slot of `backend` for a request of `priority` failed over to it, if
/// it fits the part of the failover budget that priority may fill: its
/// shedding share (`Err` if not). Unlike [`admit`], a healthy backend
/// makes no exception for normal requests, and nothing waits for the
/// budget: the failover region takes what it can, the rest is shed fast
/// instead of queuing on it. Critical requests are not held to it
/// (`Ok(None)`): they keep every slot the others leave, and the backend's
/// queue, as on any backend.
fn take_within_failover_budget(
    backend: &Backend,
    priority: Priority,
) -> Result<Option<BulkheadPermit>, ()> {
    let share = match priority {
        Priority::Critical => return Ok(None),
        Priority::Normal => backend.shedding.normal,
        Priority::Sheddable => backend.shedding.sheddable,
    };
    let cap = (backend.failover_budget() as f64 * share).ceil() as usize;
    backend
        .bulkhead()
        .try_acquire_below(cap.max(1))
        .map(Some)
        .ok_or(())
}

fn no_healthy_node(backend: &Backend) -> ProxyError {
    ProxyError::new(
        ErrorReason::NoHealthyNode,
        format!(
            "every node of backend {} is open or unhealthy",
            backend.name
        ),
    )
}

/// Refuses lower priorities first as the chosen backend fills up.
#[derive(Debug, Clone, Copy)]
pub struct Shed;

impl Decision for Shed {
    fn decide(&self, req: &mut Routed) -> Result<(), ProxyError> {
        if req.backend_slot.is_some() {
            // Admitted within a failover budget, a smaller share.
            return Ok(());
        }
        let priority = req.route().priority;
        match admit(req.backend(), priority, req.class) {
            Admit::Pass => return Ok(()),
            Admit::Took(slot) => {
                req.backend_slot = Some(slot);
                return Ok(());
            }
            Admit::Shed => {}
        }
        let backend = req.backend();
        backend.stats.count(BackendEvent::Shed);
        let bulkhead = backend.bulkhead();
        debug!(
            backend = %backend.name,
            priority = %priority,
            class = req.state.classes.names().get(req.class).map_or("", String::as_str),
            in_flight = bulkhead.in_flight(),
            max_in_flight = bulkhead.max_in_flight(),
            "shed: the backend is past this priority's share"
        );
        Err(ProxyError::new(
            ErrorReason::Shed,
            format!(
                "backend {} sheds {} requests at {} in flight",
                backend.name,
                priority,
                backend.bulkhead().in_flight()
            ),
        ))
    }
}

/// What [`Shed`] does with a request.
enum Admit {
    /// On to the backend's bulkhead (a free slot, or its queue).
    Pass,
    /// Within its share: this slot is the request's.
    Took(BulkheadPermit),
    Shed,
}

/// Whether a request of `priority` and `class` may go on to the backend's
/// bulkhead now. Shares are of the current limit (`max_in_flight`, or less
/// while ramping or held back by the adaptive limit). Within its share a
/// request takes its slot here; past it, sheddable requests are refused;
/// normal ones too, but only while the backend is in trouble: a busy
/// healthy backend lets them wait in its queue like critical ones.
fn admit(backend: &Backend, priority: Priority, class: usize) -> Admit {
    let share = match priority {
        Priority::Critical => return Admit::Pass,
        Priority::Normal => backend.shedding.normal,
        Priority::Sheddable => backend.shedding.sheddable,
    };
    let bulkhead = backend.bulkhead();
    let cap = (bulkhead.max_in_flight() as f64 * share).ceil() as usize;
    if let Some(slot) = bulkhead.try_acquire_below(cap.max(1)) {
        return Admit::Took(slot);
    }
    if priority == Priority::Normal && !in_trouble(backend, class) {
        Admit::Pass
    } else {
        Admit::Shed
    }
}

/// Slow, failing, a node out, or held back by its adaptive limit. A pool
/// ramping back is not: what its ramp does not admit yet waits in the queue
/// (its ramp already backs off when the nodes are slow or fail).
fn in_trouble(backend: &Backend, class: usize) -> bool {
    let admission = backend.admission();
    !admission.is_ramping() && (admission.under_pressure() || backend.nodes.strained(class))
}
