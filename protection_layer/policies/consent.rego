# Per-patient consent decision for one job: PERMIT, DENY or NO_CONSENT, with the
# redaction obligations of a PERMIT (brief, "Consent semantics"; FHIR R4 Consent).
#
# input.now        the decision instant (UTC, "YYYY-MM-DDTHH:MM:SS"); never the clock
# input.job        {"purpose": v3-ActReason code, "organization": "Organization/x",
#                   "actions": consentaction codes the job performs (access, use)}
# input.patients   {key: [consent terms, ...]}: every current consent of one patient
#                  (or of one canonical consent shape shared by many patients)
#
# Consent terms are the decision-relevant elements of a FHIR Consent, normalised at
# ingest (protection_layer/consent.py): dates are comparable strings, "" = absent.
#
# decisions[key] = {"decision", "consent", "reason", "within", "exclude"}:
#   consent  the id of the consent that decided (absent for NO_CONSENT)
#   within   data scopes of the permit: a resource is released only if it matches one
#   exclude  data scopes of matching nested deny provisions: a resource matching one is
#            redacted (see redaction.rego)
package paroma.consent

import rego.v1

decisions[key] := decision(consents) if {
	some key, consents in input.patients
}

# -- which consents apply ------------------------------------------------------------

# A consent applies to the job when it is active, of research scope, already given,
# in its period at `now`, has a determinable root decision, and its root provision's
# purposes, actors and actions (when listed) include the job's. A consent that does not
# address the job leaves it NO_CONSENT: the patient was not asked (brief).
applies(c) if {
	c.status == "active"
	"research" in c.scope
	c.date <= input.now
	root_type(c) != ""
	in_period(c.root, input.now)
	context_matches(c.root, input.job)
}

# The root provision's type, or the one implied by policyRule (R4 says the root has no
# type; real consents put one there, R5 calls it `decision`): both are accepted.
root_type(c) := c.root.type if {
	c.root.type != ""
} else := "permit" if {
	c.rule == "OPTIN"
} else := "deny" if {
	c.rule == "OPTOUT"
} else := ""

in_period(p, now) if {
	starts_by(p.start, now)
	ends_after(p.end, now)
}

starts_by(start, _) if start == ""

starts_by(start, now) if {
	start != ""
	start <= now
}

ends_after(end, _) if end == ""

ends_after(end, now) if {
	end != ""
	now < end
}

context_matches(p, job) if {
	purpose_matches(p, job)
	actor_matches(p, job)
	action_matches(p, job)
}

purpose_matches(p, _) if count(p.purposes) == 0

purpose_matches(p, job) if job.purpose in p.purposes

actor_matches(p, _) if count(p.actors) == 0

actor_matches(p, job) if job.organization in p.actors

action_matches(p, _) if count(p.actions) == 0

action_matches(p, job) if {
	some action in p.actions
	action in job.actions
}

# -- most recent applicable consent wins -----------------------------------------------

# `a` supersedes `b`: later dateTime; on the same dateTime a refusal wins over a
# permission (fail closed), then the larger id (a total order, so one winner).
supersedes(a, b) if a.date > b.date

supersedes(a, b) if {
	a.date == b.date
	root_type(a) == "deny"
	root_type(b) == "permit"
}

supersedes(a, b) if {
	a.date == b.date
	root_type(a) == root_type(b)
	a.id > b.id
}

winner(consents) := c if {
	some c in consents
	applies(c)
	not superseded(c, consents)
}

superseded(c, consents) if {
	some other in consents
	other.id != c.id
	applies(other)
	supersedes(other, c)
}

# -- the decision ----------------------------------------------------------------------

decision(consents) := decide(winner(consents)) if {
	is_object(winner(consents))
} else := {
	"decision": "NO_CONSENT",
	"reason": "no active research consent addresses this purpose and organisation",
}

# A nested provision without a type is an exception to its parent: the opposite type.
nested_type(c, n) := n.type if n.type != ""

nested_type(c, n) := "deny" if {
	n.type == ""
	root_type(c) == "permit"
}

nested_type(c, n) := "permit" if {
	n.type == ""
	root_type(c) == "deny"
}

# Nested provisions that concern this job now (their purposes, actors, actions, period).
active_nested(c, kind) := [n |
	some n in c.root.provisions
	nested_type(c, n) == kind
	in_period(n, input.now)
	context_matches(n, input.job)
]

has_data_criteria(p) if count(p.classes) > 0

has_data_criteria(p) if count(p.codes) > 0

has_data_criteria(p) if count(p.labels) > 0

has_data_criteria(p) if p.data_start != ""

has_data_criteria(p) if p.data_end != ""

scope(p) := {
	"classes": p.classes,
	"codes": p.codes,
	"labels": p.labels,
	"data_start": p.data_start,
	"data_end": p.data_end,
}

whole_job_denies(c) := [n | some n in active_nested(c, "deny"); not has_data_criteria(n)]

data_denies(c) := [scope(n) | some n in active_nested(c, "deny"); has_data_criteria(n)]

permit_scopes(c) := [scope(n) | some n in active_nested(c, "permit")]

# Root permit: a matching nested deny without data criteria refuses the whole job; one
# with data criteria (class, code, securityLabel, dataPeriod) redacts what it covers.
decide(c) := {
	"decision": "DENY",
	"consent": c.id,
	"reason": "a deny provision of the consent covers this purpose and organisation",
} if {
	root_type(c) == "permit"
	count(whole_job_denies(c)) > 0
}

decide(c) := {
	"decision": "PERMIT",
	"consent": c.id,
	"reason": "the consent permits this purpose and organisation",
	"within": [scope(c.root)],
	"exclude": data_denies(c),
} if {
	root_type(c) == "permit"
	count(whole_job_denies(c)) == 0
}

# Root deny (opt-out): refused, unless a nested permit makes an exception for this job;
# then only the data that exception names is released.
decide(c) := {
	"decision": "DENY",
	"consent": c.id,
	"reason": "the consent refuses this purpose and organisation",
} if {
	root_type(c) == "deny"
	count(active_nested(c, "permit")) == 0
}

decide(c) := {
	"decision": "PERMIT",
	"consent": c.id,
	"reason": "a permit provision of the consent makes an exception for this purpose and organisation",
	"within": permit_scopes(c),
	"exclude": [],
} if {
	root_type(c) == "deny"
	count(active_nested(c, "permit")) > 0
}
