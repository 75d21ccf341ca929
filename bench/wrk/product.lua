-- GET /products/{id} over the ids listed one per line in $BAZAAR_IDS, round robin per thread.
local ids = {}
for line in io.lines(os.getenv("BAZAAR_IDS")) do ids[#ids + 1] = line end
local i = 0
request = function()
  i = i % #ids + 1
  return wrk.format("GET", "/products/" .. ids[i])
end
