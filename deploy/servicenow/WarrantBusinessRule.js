/**
 * Business rule: Warrant: send change to warrant
 *
 *   Table:     Change Request [change_request]
 *   Active:    true      Advanced: true
 *   When:      async     (runs after the record is saved, in the background)
 *   Insert:    true      Update: true
 *   Order:     1000
 *   Condition (Advanced tab, one line):
 *     current.operation() == 'insert' || current.state.changes() || current.approval.changes() || current.start_date.changes() || current.end_date.changes() || current.assigned_to.changes() || current.u_access_resource.changes()
 *
 * The condition is where the "what changed" test lives: it is evaluated when
 * the change is saved, while `previous` still exists. The async script itself
 * runs later, without `previous`, and reads the record as it is then, so the
 * snapshot warrant receives is never older than the change that triggered it.
 *
 * Needs the Script Include WarrantWebhook and the system properties
 * x_warrant.endpoint and x_warrant.secret (see README.md).
 */
(function executeRule(current, previous /* null in async rules */) {
    new WarrantWebhook().send(current);
})(current, previous);
