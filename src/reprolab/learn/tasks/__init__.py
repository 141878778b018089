"""learn/tasks"""
