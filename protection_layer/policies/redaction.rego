# Resource redaction inside a PERMIT (brief, "Consent semantics"): which resources of a
# permitted patient the job may see, decided on the store's index (type, codes,
# security labels, clinical date range), never on decrypted content.
#
# input.items  {key: {"within": [scope], "exclude": [scope], "resource": resource}}
#   within     the permit's data scopes (from consent.rego): a resource is released only
#              if it matches at least one of them; a scope without criteria matches all
#   exclude    the data scopes of matching nested deny provisions: a resource matching
#              one of them is removed
#   resource   {"type", "codes": [{system, code}], "labels": [{system, code}],
#               "start", "end"}: dates as in consent.rego, "" when the resource has none
#
# released[key] = true | false for every item (a missing key is treated as not released).
package paroma.redaction

import rego.v1

released[key] := true if {
	some key, item in input.items
	allowed(item, item.resource)
}

released[key] := false if {
	some key, item in input.items
	not allowed(item, item.resource)
}

allowed(obligations, r) if {
	some scope in obligations.within
	inside(scope, r)
	not excluded(obligations, r)
}

excluded(obligations, r) if {
	some scope in obligations.exclude
	covers(scope, r)
}

# A permit scope holds a resource when every listed criterion matches and the resource
# lies wholly inside its dataPeriod (an undated resource cannot be shown to).
inside(scope, r) if {
	class_matches(scope, r)
	code_matches(scope, r)
	label_matches(scope, r)
	within_data_period(scope, r)
}

# A deny scope covers a resource when every listed criterion matches and the resource
# touches its dataPeriod (an undated resource is treated as touching it: fail closed).
covers(scope, r) if {
	class_matches(scope, r)
	code_matches(scope, r)
	label_matches(scope, r)
	touches_data_period(scope, r)
}

class_matches(scope, _) if count(scope.classes) == 0

class_matches(scope, r) if r.type in scope.classes

code_matches(scope, _) if count(scope.codes) == 0

code_matches(scope, r) if {
	some wanted in scope.codes
	some coding in r.codes
	coding_matches(wanted, coding)
}

label_matches(scope, _) if count(scope.labels) == 0

label_matches(scope, r) if {
	some wanted in scope.labels
	some label in r.labels
	coding_matches(wanted, label)
}

# A consent coding without a system matches the code in any system.
coding_matches(wanted, coding) if {
	wanted.code == coding.code
	wanted.system == ""
}

coding_matches(wanted, coding) if {
	wanted.code == coding.code
	wanted.system == coding.system
}

no_data_period(scope) if {
	scope.data_start == ""
	scope.data_end == ""
}

within_data_period(scope, _) if no_data_period(scope)

within_data_period(scope, r) if {
	not no_data_period(scope)
	r.start != ""
	after_start(scope, r.start)
	before_end(scope, resource_end(r))
}

touches_data_period(scope, _) if no_data_period(scope)

touches_data_period(scope, r) if {
	not no_data_period(scope)
	r.start == ""
}

touches_data_period(scope, r) if {
	not no_data_period(scope)
	r.start != ""
	ends_after_start(scope, resource_end(r))
	starts_before_end(scope, r.start)
}

resource_end(r) := r.end if r.end != ""

resource_end(r) := r.start if r.end == ""

after_start(scope, _) if scope.data_start == ""

after_start(scope, t) if {
	scope.data_start != ""
	t >= scope.data_start
}

before_end(scope, _) if scope.data_end == ""

before_end(scope, t) if {
	scope.data_end != ""
	t <= scope.data_end
}

ends_after_start(scope, _) if scope.data_start == ""

ends_after_start(scope, t) if {
	scope.data_start != ""
	t > scope.data_start
}

starts_before_end(scope, _) if scope.data_end == ""

starts_before_end(scope, t) if {
	scope.data_end != ""
	t < scope.data_end
}
