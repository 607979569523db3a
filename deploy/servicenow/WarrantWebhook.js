/**
 * WarrantWebhook: Script Include (global scope) that sends a change_request to
 * warrant as a signed webhook.
 *
 *   Name: WarrantWebhook   API name: global.WarrantWebhook
 *   Client callable: false  Accessible from: All application scopes
 *
 * It serialises the change to flat JSON, signs it per Standard Webhooks
 * (webhook-id, webhook-timestamp, webhook-signature: v1,BASE64 where the MAC is
 * HMAC-SHA256 over "ID.TIMESTAMP.BODY" keyed with the base64 part of a whsec_
 * secret) and POSTs it with sn_ws.RESTMessageV2.executeAsync().
 *
 * System properties (System Properties > New):
 *   x_warrant.endpoint  string     https://warrant.example.com/webhooks/servicenow
 *   x_warrant.secret    password2  whsec_... (the value of WARRANT_SERVICENOW_SECRET)
 *
 * Called by the business rule in WarrantBusinessRule.js; by hand, in
 * Scripts - Background:
 *   var gr = new GlideRecord('change_request');
 *   gr.get('number', 'CHG0030001');
 *   new WarrantWebhook().send(gr);
 *
 * The secret never appears in a log line, and neither do the signature or the
 * body. Failures are logged with source "WarrantWebhook" (System Logs > All).
 */
var WarrantWebhook = Class.create();
WarrantWebhook.prototype = {
    ENDPOINT_PROPERTY: 'x_warrant.endpoint',
    SECRET_PROPERTY: 'x_warrant.secret',
    // Must match sources.servicenow.fields.resource in warrant's configuration.
    RESOURCE_FIELD: 'u_access_resource',
    // How long the HTTP call may take, and how long send() waits for its answer
    // to log a failure (the business rule is async, so waiting blocks no user).
    HTTP_TIMEOUT_MS: 10000,
    WAIT_SECONDS: 15,

    initialize: function() {},

    /**
     * Serialises, signs and POSTs one change_request.
     * @param {GlideRecord} change a change_request record
     * @param {boolean} [noWait] true: fire and forget, do not wait to log the answer
     * @returns {boolean} true when warrant answered 2xx (or, with noWait, the call was queued)
     */
    send: function(change, noWait) {
        var number = String(change.getValue('number') || change.getUniqueValue());
        var endpoint = String(gs.getProperty(this.ENDPOINT_PROPERTY, '') || '').trim();
        if (!endpoint) {
            this._fail(number, 'system property ' + this.ENDPOINT_PROPERTY + ' is not set');
            return false;
        }
        var key = this._key();
        if (!key) {
            this._fail(number, 'system property ' + this.SECRET_PROPERTY +
                ' is not set or is not a Standard Webhooks secret (whsec_ followed by base64)');
            return false;
        }

        var body = this.toJson(this.serialize(change));
        var id = 'msg_' + gs.generateGUID();
        var timestamp = String(Math.floor(new Date().getTime() / 1000));
        var signature;
        try {
            signature = String(new GlideCertificateEncryption()
                .generateMac(key, 'HmacSHA256', id + '.' + timestamp + '.' + body));
        } catch (e) {
            this._fail(number, 'could not sign the webhook: ' + this._message(e));
            return false;
        }

        try {
            var request = new sn_ws.RESTMessageV2();
            if (typeof request.disableForcedVariableSubstitution === 'function') {
                // The body is signed: nothing may rewrite ${...} in it.
                request.disableForcedVariableSubstitution();
            }
            request.setEndpoint(endpoint);
            request.setHttpMethod('post');
            request.setHttpTimeout(this.HTTP_TIMEOUT_MS);
            request.setRequestHeader('Content-Type', 'application/json');
            request.setRequestHeader('Accept', 'application/json');
            request.setRequestHeader('webhook-id', id);
            request.setRequestHeader('webhook-timestamp', timestamp);
            request.setRequestHeader('webhook-signature', 'v1,' + signature);
            request.setRequestBody(body);

            var response = request.executeAsync();
            if (noWait) {
                return true;
            }
            response.waitForResponse(this.WAIT_SECONDS);
            var status = response.getStatusCode();
            if (response.haveError() || status < 200 || status > 299) {
                var detail = response.haveError() ? String(response.getErrorMessage() || '') : '';
                var answer = String(response.getBody() || '').substring(0, 300);
                this._fail(number, 'warrant answered HTTP ' + status + ' (delivery ' + id + ')' +
                    (detail ? ': ' + detail : '') + (answer ? ' ' + answer : ''));
                return false;
            }
            return true;
        } catch (ex) {
            this._fail(number, 'could not send delivery ' + id + ': ' + this._message(ex));
            return false;
        }
    },

    /**
     * The flat object warrant reads. Dates are getValue() strings,
     * "YYYY-MM-DD HH:MM:SS" in UTC; an empty field is null.
     */
    serialize: function(change) {
        var sysId = change.getUniqueValue();
        var out = {
            table: 'change_request',
            sys_id: sysId,
            number: this._value(change, 'number'),
            state: this._value(change, 'state'),
            approval: this._value(change, 'approval'),
            approved_by: this.approvedBy(sysId),
            assigned_to: this._userName(change, 'assigned_to'),
            start_date: this._value(change, 'start_date'),
            end_date: this._value(change, 'end_date'),
            short_description: this._value(change, 'short_description'),
            sys_updated_on: this._value(change, 'sys_updated_on')
        };
        out[this.RESOURCE_FIELD] = this._value(change, this.RESOURCE_FIELD);
        return out;
    },

    /** user_names of the approvers whose approval record for this change is approved. */
    approvedBy: function(changeSysId) {
        var names = [];
        var approval = new GlideRecord('sysapproval_approver');
        approval.addQuery('sysapproval', changeSysId);
        approval.addQuery('state', 'approved');
        approval.orderBy('sys_updated_on');
        approval.query();
        while (approval.next()) {
            if (approval.approver.nil()) {
                continue;
            }
            var name = String(approval.approver.user_name);
            if (name && names.indexOf(name) < 0) {
                names.push(name);
            }
        }
        return names;
    },

    /**
     * JSON with every character outside printable ASCII, and "$", written as
     * \uXXXX: the same JSON value, but bytes that no charset conversion or
     * variable substitution can change between signing and sending.
     */
    toJson: function(value) {
        return JSON.stringify(value).replace(/[^\x20-\x23\x25-\x7e]/g, function(c) {
            return '\\u' + ('0000' + c.charCodeAt(0).toString(16)).slice(-4);
        });
    },

    /** The base64 key of the whsec_ secret, or '' when it is missing or malformed. */
    _key: function() {
        var secret = String(gs.getProperty(this.SECRET_PROPERTY, '') || '').trim();
        if (secret.indexOf('whsec_') !== 0) {
            return '';
        }
        var key = secret.substring('whsec_'.length);
        return /^[A-Za-z0-9+\/]+={0,2}$/.test(key) ? key : '';
    },

    _value: function(record, field) {
        var v = record.getValue(field);
        return (v === null || v === undefined || v === '') ? null : String(v);
    },

    _userName: function(record, field) {
        if (record[field].nil()) {
            return null;
        }
        var name = String(record[field].user_name);
        return name ? name : null;
    },

    _message: function(e) {
        return String(e && (e.message || (e.getMessage && e.getMessage())) || e);
    },

    _fail: function(number, message) {
        gs.error('WarrantWebhook: ' + number + ': ' + message, 'WarrantWebhook');
    },

    type: 'WarrantWebhook'
};
