# Site admission of a job: does this hospital take part, and if not, why not.
#
# input.job     {"name", "purpose", "organization", "plan", "plan_sha256",
#                "privacy": {"clip_norm", "noise_multiplier", "delta", "secure_aggregation"},
#                "round_timeout_s"}: the job spec (paroma/jobspec.py)
# input.site    the site's [policy] table (clinical_node/policy.py SitePolicy.to_input)
# input.node    {"isolation": the sandbox isolation the node's executor provides,
#                "approved_plans": [sha256, ...]: the site's plan allow-list}
# input.cohort  {"permit", "deny", "no_consent"}: this job's consent decisions now
#
# decision = {"accepted": bool, "reasons": [text], "obligations": [text]}: every refusal
# reason, in words the data scientist can act on (brief: refusals with no reason are a pain
# point), and what the site will do to an admitted job's updates.
package paroma.admission

import rego.v1

isolation_levels := ["none", "subprocess", "unshare", "bubblewrap"]

rank(level) := i if {
	some i, name in isolation_levels
	name == level
}

rank(level) := -1 if not level in isolation_levels

default decision := {"accepted": false, "reasons": ["the admission policy could not decide"]}

decision := {"accepted": count(refusals) == 0, "reasons": sort(refusals), "obligations": sort(obligations)} if {
	is_object(input.job)
	is_object(input.site)
	is_object(input.node)
	is_object(input.cohort)
}

refusals contains msg if {
	not input.job.purpose in input.site.purposes
	msg := sprintf("purpose %s is not admitted at this site (admitted: %s)", [input.job.purpose, admitted(input.site.purposes)])
}

refusals contains msg if {
	not input.job.organization in input.site.organizations
	msg := sprintf("organisation %s is not admitted at this site", [input.job.organization])
}

refusals contains msg if {
	not input.job.plan_sha256 in input.node.approved_plans
	msg := sprintf("training plan %s (sha256 %s…) is not approved at this site", [input.job.plan, substring(input.job.plan_sha256, 0, 12)])
}

refusals contains msg if {
	rank(input.node.isolation) < rank(input.site.min_isolation)
	msg := sprintf("this site requires sandbox isolation %s; its sandbox provides %s", [input.site.min_isolation, input.node.isolation])
}

refusals contains msg if {
	input.job.round_timeout_s > input.site.max_round_seconds
	msg := sprintf("round timeout %v s exceeds the site's limit of %v s", [input.job.round_timeout_s, input.site.max_round_seconds])
}

refusals contains msg if {
	input.cohort.permit < input.site.min_cohort
	msg := sprintf("only %d patients consent to this job here; the site trains on at least %d", [input.cohort.permit, input.site.min_cohort])
}

# Required privacy: where the site demands differential privacy the node clips and noises
# every update itself, outside the sandbox, so the job cannot skip it; admission states it as
# an obligation the data scientist sees instead of refusing the job.
obligations contains msg if {
	input.site.require_dp == true
	msg := sprintf("site-enforced differential privacy: each update clipped to norm %v with Gaussian noise multiplier %v", [input.site.dp_clip_norm, input.site.dp_noise_multiplier])
}

admitted(purposes) := concat(", ", purposes) if count(purposes) > 0

admitted(purposes) := "none" if count(purposes) == 0
