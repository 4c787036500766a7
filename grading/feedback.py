"""A student's feedback page: each part, its points and why it failed; never the test code."""
from __future__ import annotations

from html import escape

from grading.score import SubmissionResult

STATUS_TEXT = {"passed": "passed 通过", "failed": "failed 未通过", "timeout": "timed out 超时",
               "not run": "not run 未运行", "kernel died": "kernel died 内核终止", "output cap": "too much output 输出过多",
               "tampered": "tampered 篡改"}


def feedback_html(result: SubmissionResult) -> str:
    rows = []
    for p in result.parts:
        rows.append(f"<tr><td><code>{escape(p.id)}</code></td><td>{p.points:g} / {p.max_points:g}</td>"
                    f"<td>{escape(STATUS_TEXT.get(p.status, p.status))}</td><td>{escape(p.message)}</td></tr>")
    problem = f"<p><b>What happened 发生了什么:</b> {escape(result.problem)}</p>" if result.problem else ""
    if result.setup_error:
        problem += f"<p><b>The lab's setup failed 实验环境设置失败:</b> {escape(result.setup_error)}</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(result.lab)}: {escape(result.student)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}} td,th{{border:1px solid #ccc;padding:.3em .6em;
text-align:left;vertical-align:top}} table{{border-collapse:collapse}}</style></head><body>
<h1>Lab {escape(result.lab)}: feedback 反馈</h1>
<p>Student 学生: <b>{escape(result.student)}</b>. Score 得分: <b>{result.score:g} / {result.max_score:g}</b></p>
{problem}
<table><tr><th>part 部分</th><th>points 分数</th><th>result 结果</th><th>why 原因</th></tr>
{''.join(rows)}
</table>
<p>Each part's public checks run again with <code>grading.check("part-id")</code> in your notebook; the hidden checks
are only run at grading. 每个部分的公开检查可在笔记本中用 <code>grading.check("part-id")</code> 重新运行。</p>
</body></html>
"""
