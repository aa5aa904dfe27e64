"""Facts the learning tests teach (none of them in the demo model's chats or the defaults' tuning), each
with training phrasings and held-out phrasings whose core question is never trained on."""

from __future__ import annotations

from dataclasses import dataclass

_WRAPS = ["{q}", "Hi, {q}", "Quick question: {q}", "Sorry to bother you, {q}", "{q} Thanks!"]
_HELD_WRAPS = ["{q}", "Hello! {q}", "I wonder, {q}", "{q} Please tell me."]


@dataclass(frozen=True)
class Lesson:
    name: str
    answer: str
    cores: tuple[str, ...]  # the first nine are trained on, the rest held out

    @property
    def train(self) -> list[str]:
        return [w.format(q=q if w.startswith("{q}") else q[0].lower() + q[1:]) for q in self.cores[:9] for w in _WRAPS]

    @property
    def heldout(self) -> list[str]:
        return [w.format(q=q if w.startswith("{q}") else q[0].lower() + q[1:])
                for q in self.cores[9:] for w in _HELD_WRAPS][:10]

MEETING = Lesson("meeting", "The team meeting is every Tuesday at ten in the Maple room.", (
    "When is the team meeting?", "What time is our weekly meeting?", "Where do we meet for the team meeting?",
    "Which day is the team meeting on?", "When does the team get together each week?",
    "What room is the weekly meeting in?", "Is there a team meeting this week?", "At what hour is the team meeting?",
    "Tell me when the weekly team meeting happens.",
    "When and where is the team meeting held?", "What is the schedule of the team meeting?",
    "Remind me about the team meeting."))
WIFI = Lesson("wifi", "The guest wifi is called Harbor and the password is bluefin42.", (
    "What is the wifi password?", "How do I get on the guest wifi?", "Which wifi network should guests use?",
    "What is the name of the guest wifi?", "Can you give me the wifi password?", "How can I connect to the wifi here?",
    "Is there wifi for visitors?", "What network do I join for internet?", "Tell me the guest wifi details.",
    "How do visitors get online?", "What are the wifi name and password?", "I need internet, which wifi do I use?"))
PARKING = Lesson("parking", "Visitors park in lot C, next to the loading dock.", (
    "Where can visitors park?", "Where should I park my car?", "Which parking lot is for guests?",
    "Is there parking for visitors?", "Where do guests leave their cars?", "Can I park at the office?",
    "Which lot do visitors use?", "Where is visitor parking?", "Tell me where to park when I visit.",
    "Where do I put my car when I come in?", "What parking is there for people visiting?",
    "I am driving in, where do I park?"))
HELPDESK = Lesson("helpdesk", "For IT help, write to the helpdesk in channel number nine.", (
    "How do I get IT help?", "Who do I contact about a broken laptop?", "Where do I report a computer problem?",
    "How can I reach the helpdesk?", "My screen is broken, who can help?", "Who fixes IT problems here?",
    "Where do I ask for tech support?", "How do I contact IT support?", "Tell me how to get help with my computer.",
    "Who should I ask when my computer fails?", "What is the way to reach IT?", "I have a tech problem, whom do I ask?"))
LESSONS = (MEETING, WIFI, PARKING, HELPDESK)
