-- Argo CD health check for tenantconfig.io/ConfigStore. A ConfigStore has no
-- status: it is healthy when it names exactly one backend (the CRD refuses
-- anything else; this catches objects written around it).
local hs = {}
local spec = obj.spec or {}
local backends = 0
if spec.dynamodb ~= nil then backends = backends + 1 end
if spec.parameterStore ~= nil then backends = backends + 1 end
if backends == 1 then
  hs.status = "Healthy"
  hs.message = "Serves tags: " .. table.concat(spec.tags or {}, ", ")
else
  hs.status = "Degraded"
  hs.message = "A ConfigStore must set exactly one backend (dynamodb or parameterStore); it sets " .. backends
end
return hs
