-- POST a small JSON body to the URL's path, unauthenticated (the echo baseline).
wrk.method = "POST"
wrk.body = '{"title": "Benchmark post", "body": "Written by wrk"}'
wrk.headers["Content-Type"] = "application/json"
