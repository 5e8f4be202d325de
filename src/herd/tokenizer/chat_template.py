"""The Jinja chat template herd writes into ``tokenizer_config.json``.

It renders dialogs the way the template Hugging Face ships with Llama 3.1 / 3.2 Instruct
does: a system message that always carries the knowledge-cutoff and date lines
(``date_string``, default "26 Jul 2024") followed by the user's system prompt;
``builtin_tools`` adds ``Environment: ipython`` and a ``Tools:`` line; JSON ``tools`` are
described in the first user message (in the system message with
``tools_in_user_message=false``); assistant tool calls are written as JSON (built-in
tools as ``<|python_tag|>name.call(...)`` ending in ``<|eom_id|>``), and tool results
under the ``ipython`` header.
"""

CHAT_TEMPLATE = r"""
{%- set day = date_string if date_string is defined else "26 Jul 2024" -%}
{%- if custom_tools is defined and custom_tools -%}
    {%- set fn_tools = custom_tools -%}
{%- elif tools is defined and tools -%}
    {%- set fn_tools = tools -%}
{%- else -%}
    {%- set fn_tools = none -%}
{%- endif -%}
{%- set in_user = tools_in_user_message if tools_in_user_message is defined else true -%}
{%- set has_builtins = builtin_tools is defined -%}
{%- set call_format = 'Respond in the format {"name": function name, "parameters": '
    ~ 'dictionary of argument name and its value}.Do not use variables.\n\n' -%}

{%- macro header(role) -%}
    {{- "<|start_header_id|>" + role + "<|end_header_id|>\n\n" -}}
{%- endmacro -%}

{%- macro text_of(content) -%}
    {%- if content is string -%}
        {{- content | trim -}}
    {%- else -%}
        {%- for part in content if part["type"] == "text" -%}{{- part["text"] | trim -}}{%- endfor -%}
    {%- endif -%}
{%- endmacro -%}

{%- macro tool_list(items) -%}
    {%- for t in items -%}{{- t | tojson(indent=4) + "\n\n" -}}{%- endfor -%}
{%- endmacro -%}

{{- bos_token -}}
{%- if messages and messages[0]["role"] == "system" -%}
    {%- set system_text = text_of(messages[0]["content"]) -%}
    {%- set turns = messages[1:] -%}
{%- else -%}
    {%- set system_text = "" -%}
    {%- set turns = messages -%}
{%- endif -%}

{#- The system message: environment, tools, dates, then the user's system prompt. -#}
{{- header("system") -}}
{%- if has_builtins or fn_tools is not none -%}{{- "Environment: ipython\n" -}}{%- endif -%}
{%- if has_builtins -%}
    {{- "Tools: " + (builtin_tools | reject("equalto", "code_interpreter") | join(", ")) + "\n\n" -}}
{%- endif -%}
{{- "Cutting Knowledge Date: December 2023\nToday Date: " + day + "\n\n" -}}
{%- if fn_tools is not none and not in_user -%}
    {{- "You have access to the following functions. "
        ~ "To call a function, please respond with JSON for a function call." -}}
    {{- call_format + tool_list(fn_tools) -}}
{%- endif -%}
{{- system_text + "<|eot_id|>" -}}

{#- JSON tools go into the first user message. -#}
{%- if fn_tools is not none and in_user -%}
    {%- if not turns -%}{{- raise_exception("tools in the user message need a user message") -}}{%- endif -%}
    {{- header("user") -}}
    {{- "Given the following functions, please respond with a JSON for a function call "
        ~ "with its proper arguments that best answers the given prompt.\n\n" -}}
    {{- call_format + tool_list(fn_tools) + text_of(turns[0]["content"]) + "<|eot_id|>" -}}
    {%- set turns = turns[1:] -%}
{%- endif -%}

{%- for message in turns -%}
    {%- set role = message["role"] -%}
    {%- if role == "tool" or role == "ipython" -%}
        {{- header("ipython") -}}
        {{- (message["content"] if message["content"] is string else text_of(message["content"])) | tojson -}}
        {{- "<|eot_id|>" -}}
    {%- elif message["tool_calls"] is defined and message["tool_calls"] -%}
        {%- if message["tool_calls"] | length > 1 -%}
            {{- raise_exception("Llama 3.1 makes one tool call per message") -}}
        {%- endif -%}
        {%- set call = message["tool_calls"][0] -%}
        {%- set call = call["function"] if call["function"] is defined else call -%}
        {{- header("assistant") -}}
        {%- if has_builtins and call["name"] in builtin_tools -%}
            {{- "<|python_tag|>" + call["name"] + ".call(" -}}
            {%- for key, value in call["arguments"] | items -%}
                {{- key + '="' + value + '"' -}}{%- if not loop.last -%}{{- ", " -}}{%- endif -%}
            {%- endfor -%}
            {{- ")" -}}
        {%- else -%}
            {{- '{"name": "' + call["name"] + '", "parameters": ' + (call["arguments"] | tojson) + "}" -}}
        {%- endif -%}
        {{- "<|eom_id|>" if has_builtins else "<|eot_id|>" -}}
    {%- else -%}
        {{- header(role) + text_of(message["content"]) + "<|eot_id|>" -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- header("assistant") -}}{%- endif -%}
""".strip()
