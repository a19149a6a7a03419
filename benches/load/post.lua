-- wrk script: POST a small, realistic, non-streaming chat completion request.
-- The same request (method, path, headers, body) is sent to every target.
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-load-benchmark-not-a-real-key"
wrk.body = '{"model":"pixtral-12b-2409",'
  .. '"messages":[{"role":"system","content":"You are a careful assistant."},'
  .. '{"role":"user","content":[{"type":"text","text":"What is in this image? Answer in one sentence."}]}],'
  .. '"temperature":0.7,"max_tokens":256}'
