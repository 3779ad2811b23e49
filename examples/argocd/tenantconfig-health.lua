-- Argo CD health check for tenantconfig.io/TenantConfig.
-- Healthy: Ready for the current generation. Progressing: not reconciled yet,
-- reconciling, or waiting for a store (throttled, unavailable). Degraded: a
-- refusal that only a spec, namespace or store change can lift.
local hs = {}
local generation = obj.metadata and obj.metadata.generation
local status = obj.status
if status == nil or status.observedGeneration == nil or status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to reconcile this generation"
  return hs
end
local ready = nil
for _, condition in ipairs(status.conditions or {}) do
  if condition.type == "Ready" then
    ready = condition
  end
end
if ready == nil or ready.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition of this generation"
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = (status.projectedKeys or 0) .. " key(s) projected into ConfigMap " .. (status.configMap or "")
  return hs
end
local waiting = { Throttled = true, StoreUnavailable = true }
if waiting[ready.reason] then
  hs.status = "Progressing"
else
  hs.status = "Degraded"
end
hs.message = ready.reason .. ": " .. (ready.message or "")
return hs
